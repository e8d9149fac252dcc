-- End one child slot; the parent's totals stay as they are.
-- KEYS[1] = the parent's in-flight sorted set (slot id -> expiry, ms since the epoch)
-- ARGV[1] = slot id
-- Returns 1 if the slot was in flight, 0 if it was released already or had expired.
local expires_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires_ms then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if tonumber(expires_ms) > now_ms then
  return 1
end
return 0
