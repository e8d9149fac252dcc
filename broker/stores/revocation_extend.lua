-- Hold a revocation (of a token, or a tree kill) until a deadline; never shorten one.
-- KEYS[1] = the revocation key
-- ARGV[1] = the deadline, whole milliseconds since the epoch
-- Returns 1 if the key was newly set, 0 if it existed (its deadline may have moved later) or
-- the deadline has already passed (nothing is recorded).
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local until_ms = tonumber(ARGV[1])
if until_ms <= now_ms then
  return 0
end
if redis.call('SET', KEYS[1], '1', 'NX', 'PXAT', ARGV[1]) then
  return 1
end
-- PEXPIREAT ... GT would do this in one call, but needs Redis 7; PTTL works from 6.2.
if now_ms + redis.call('PTTL', KEYS[1]) < until_ms then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
return 0
