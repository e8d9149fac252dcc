-- Revoke every credential of one agent and, if a digest is given, make it the agent's only one.
-- KEYS[1] = the digest index hash (digest -> agent)
-- KEYS[2] = the agent's digest set
-- ARGV[1] = agent name; ARGV[2] (optional) = the new digest
-- Returns how many credentials were revoked.
local revoked = 0
for _, digest in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  -- A digest since handed to another agent is that agent's now: leave its index entry alone.
  if redis.call('HGET', KEYS[1], digest) == ARGV[1] then
    redis.call('HDEL', KEYS[1], digest)
    revoked = revoked + 1
  end
end
redis.call('DEL', KEYS[2])
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
end
return revoked
