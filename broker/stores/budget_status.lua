-- Read the counters of limits in their current windows. Changes nothing.
-- ARGV[1] = counter key base "<prefix>:{budget}"
-- ARGV[2..] = (scope key, metric, window) per limit
-- Returns {used, reserved, overage, window start} per limit, flattened, as decimal text.
local now_s = math.floor(now_ms() / 1000)
local out = {}
for i = 2, #ARGV, 3 do
  local scope, metric, window = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local start = window_bounds(window, now_s)
  local key = counter_key(ARGV[1], window, start, scope)
  local counts = redis.call('HMGET', key, 'used:' .. metric, 'rsv:' .. metric, 'over:' .. metric)
  for j = 1, 3 do
    out[#out + 1] = counts[j] or '0'
  end
  out[#out + 1] = int(start)
end
return out
