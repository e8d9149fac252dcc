-- Keep one alert and only the newest N.
-- KEYS[1] = hash id -> alert JSON, KEYS[2] = sorted set id -> time, KEYS[3] = hash id -> ack
-- ARGV[1] = id, ARGV[2] = JSON, ARGV[3] = time, ARGV[4] = how many to keep, ARGV[5] = TTL
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[3], unpack(old))
end
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
return 1
