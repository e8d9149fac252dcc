-- Count into a window that starts with its first count; say when the count reaches a threshold.
-- KEYS[1] = the counter; ARGV[1] = amount, ARGV[2] = window seconds, ARGV[3] = threshold
-- Returns the new count if this amount made it reach the threshold, else 0 (so once a window).
local amount = tonumber(ARGV[1])
local after = redis.call('INCRBY', KEYS[1], amount)
if after == amount or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local threshold = tonumber(ARGV[3])
if after - amount < threshold and after >= threshold then
  return after
end
return 0
