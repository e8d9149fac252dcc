-- Record a task route unless another owner holds it; the same owner refreshes its TTL.
-- KEYS[1] = the route key
-- ARGV[1] = the route JSON, ARGV[2] = its owner, ARGV[3] = TTL in seconds
-- Returns 1 if the route now holds, 0 if another owner's route was left unchanged.
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['owner'] ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
