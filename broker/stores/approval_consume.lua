-- Use an approved approval for the action of a digest, at most once (redis_approvals.py).
-- KEYS[1]: the approval's hash. ARGV: digest, now (epoch s).
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 'not_found' end
local f = redis.call('HMGET', h, 'state', 'exp', 'digest')
if f[1] ~= 'approved' then return 'not_approved' end
if tonumber(ARGV[2]) >= tonumber(f[2]) then return 'expired' end
if f[3] ~= ARGV[1] then return 'digest_mismatch' end
redis.call('HSET', h, 'state', 'used')
return 'ok'
