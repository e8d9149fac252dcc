-- End a pending or approved (unused) approval: expired, voided or cancelled (redis_approvals.py).
-- KEYS[1]: the approval's hash. ARGV: state, reason, now (epoch s).
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 'not_found' end
local state = redis.call('HGET', h, 'state')
if state ~= 'pending' and state ~= 'approved' then return 'not_pending' end
redis.call('HSET', h, 'state', ARGV[1], 'why', ARGV[2], 'at', ARGV[3])
return 'ok'
