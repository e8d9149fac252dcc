-- One approver's decision on a pending approval (broker/stores/redis_approvals.py).
-- KEYS[1]: the approval's hash. ARGV: approver, "1" approve / "0" deny, reason, now (epoch s).
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 'not_found' end
local f = redis.call('HMGET', h, 'state', 'exp', 'deny', 'votes', 'quorum')
local state, exp, deny, votes, quorum = f[1], tonumber(f[2]), f[3], f[4] or '', tonumber(f[5])
if state ~= 'pending' then return 'not_pending' end
if tonumber(ARGV[4]) >= exp then return 'expired' end
local me = '\n' .. ARGV[1] .. '\n'
if string.find(deny, me, 1, true) then return 'in_chain' end
if string.find('\n' .. votes .. '\n', me, 1, true) then return 'already_decided' end
if ARGV[2] == '0' then
  redis.call('HSET', h, 'state', 'denied', 'by', ARGV[1], 'why', ARGV[3], 'at', ARGV[4])
  return 'ok'
end
if votes == '' then votes = ARGV[1] else votes = votes .. '\n' .. ARGV[1] end
local _, newlines = string.gsub(votes, '\n', '')
redis.call('HSET', h, 'votes', votes, 'at', ARGV[4])
if newlines + 1 >= quorum then
  redis.call('HSET', h, 'state', 'approved', 'by', ARGV[1], 'why', ARGV[3])
end
return 'ok'
