-- Store a new approval and index it until it is forgotten, unless the same action already
-- waits (redis_approvals.py). KEYS[1]: the new approval's hash, KEYS[2]: the index (sorted set
-- id -> forget-at), KEYS[3]: the action's digest key (-> the id of the approval holding it),
-- KEYS[4]: the hash of the approval the caller saw under that key (KEYS[1] if none).
-- ARGV: id, forget_at, now, expires_at (epoch s), the id seen, then the hash's field/value pairs.
-- Returns the id of the approval in force: the pending one for that action, or the new one.
local held = redis.call('GET', KEYS[3])
if held and held == ARGV[5] and redis.call('HGET', KEYS[4], 'state') == 'pending'
    and tonumber(redis.call('HGET', KEYS[4], 'exp')) > tonumber(ARGV[3]) then
  return held
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
redis.call('SET', KEYS[3], ARGV[1])
redis.call('EXPIREAT', KEYS[3], math.ceil(tonumber(ARGV[4])))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])))
return ARGV[1]
