-- Store a new approval and index it until it is forgotten (redis_approvals.py).
-- KEYS[1]: the approval's hash, KEYS[2]: the index (sorted set id -> forget-at).
-- ARGV: id, forget_at (epoch s), now, then field/value pairs for the hash.
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])))
return 'ok'
