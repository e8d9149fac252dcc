-- GCRA: admit one request for a key, or say how long until one would be admitted.
-- KEYS[1] = the key's theoretical arrival time (TAT), microseconds since the epoch
-- ARGV[1] = emission interval (us) = 1 / rate, ARGV[2] = burst tolerance (us) = interval * burst
-- Returns 0 if admitted, else the microseconds to wait (nothing taken).
-- Microseconds since the epoch stay below 2**53, so Lua's doubles hold them exactly.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local arrival = tat + tonumber(ARGV[1])
local allowed_at = arrival - tonumber(ARGV[2])
if allowed_at > now then
  return allowed_at - now
end
-- A TAT matters only until it passes; after that the key is as good as absent.
redis.call('SET', KEYS[1], string.format('%.0f', arrival), 'PX',
  string.format('%.0f', math.ceil((arrival - now) / 1000)))
return 0
