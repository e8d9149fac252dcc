-- Set one agent's status and updated_at in a single step.
-- KEYS[1] = the registry hash (name -> record JSON)
-- ARGV[1] = agent name, ARGV[2] = status, ARGV[3] = updated_at (a Python float's repr)
-- Returns the updated record JSON, or false if no agent has that name.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return false
end
local record = cjson.decode(raw)
record['status'] = ARGV[2]
record['updated_at'] = tonumber(ARGV[3])
-- cjson.encode prints numbers with 14 significant digits, which would round the timestamps.
-- The record is flat (strings and numbers), so it is written back by hand: %.17g prints every
-- double exactly, and cjson still escapes the strings.
local fields = {}
for key, value in pairs(record) do
  local text
  if type(value) == 'number' then
    text = string.format('%.17g', value)
  else
    text = cjson.encode(value)
  end
  fields[#fields + 1] = cjson.encode(key) .. ':' .. text
end
raw = '{' .. table.concat(fields, ',') .. '}'
redis.call('HSET', KEYS[1], ARGV[1], raw)
return raw
