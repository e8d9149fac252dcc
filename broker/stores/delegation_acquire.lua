-- Take one child slot under a parent delegation, or name the limit that refuses it.
-- KEYS[1] = the parent's in-flight sorted set (slot id -> expiry, ms since the epoch)
-- KEYS[2] = the parent's total children counter
-- KEYS[3] = the tree's size counter (hops in the whole task tree)
-- ARGV[1] = max concurrent, ARGV[2] = max total, ARGV[3] = max tree (0 = unlimited)
-- ARGV[4] = slot id, ARGV[5] = slot TTL (s), ARGV[6] = counter TTL (s)
-- Returns false if the slot was taken, else "total", "tree" or "concurrent" (nothing changed).
-- The server's clock dates the slots, so replicas with skewed clocks still agree.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- Slots whose broker died without releasing them stop counting once they expire.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local in_flight = redis.call('ZCARD', KEYS[1])
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local size = tonumber(redis.call('GET', KEYS[3]) or '0')
local max_concurrent = tonumber(ARGV[1])
local max_total = tonumber(ARGV[2])
local max_tree = tonumber(ARGV[3])
-- Limits that waiting cannot lift are named first, so a caller is not told to retry in vain.
if max_total > 0 and total >= max_total then
  return 'total'
end
if max_tree > 0 and size >= max_tree then
  return 'tree'
end
if max_concurrent > 0 and in_flight >= max_concurrent then
  return 'concurrent'
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[5]) * 1000, ARGV[4])
redis.call('INCR', KEYS[2])
redis.call('INCR', KEYS[3])
-- Every acquire pushes the counters' expiry out; ARGV[6] >= ARGV[5], so no slot outlives its set.
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[6])
end
return false
