-- Record one task of a task tree for a while; adding it again resets its expiry.
-- KEYS[1] = the tree's task sorted set (member -> expiry, ms since the epoch)
-- ARGV[1] = the member (JSON [agent, task_id]), ARGV[2] = its TTL (s)
-- Each task expires on its own; the set lives as long as its latest-expiring task.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]) * 1000, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
