-- Acknowledge a kept alert once.
-- KEYS[1] = hash id -> alert JSON, KEYS[2] = hash id -> "time|who"; ARGV[1] = id, ARGV[2] = ack
-- Returns 1 if acknowledged now, 0 if the alert is unknown or was acknowledged already.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
return redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
