-- Record a task route unless another owner holds it; the same owner refreshes its TTL.
-- KEYS[1] = the route key
-- ARGV[1] = the owner (the key's value), ARGV[2] = TTL in seconds
-- Returns 1 if the route now holds, 0 if another owner's route was left unchanged.
-- A value written as JSON by an earlier version is compared by its owner field.
local current = redis.call('GET', KEYS[1])
if current then
  local owner = current
  if string.sub(current, 1, 1) == '{' then
    owner = cjson.decode(current)['owner']
  end
  if owner ~= ARGV[1] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
