-- Put before delegation_acquire.lua (one script): take a child slot under a presented token
-- only if its tree is not killed and the token not revoked, so the revocation check and the
-- acquire cost one round trip. For a single server only, where a script may touch keys of
-- any slot: the token's marker is not in the tree's slot (see redis_delegation), so a cluster
-- checks first and acquires after.
-- KEYS[4] = the tree's killed marker, KEYS[5] = the token's revoked marker (KEYS[1..3] and
-- ARGV as delegation_acquire.lua). Returns "tree_killed" or "token_revoked" (nothing changed;
-- a killed tree is the wider stop, so named first), else what delegation_acquire.lua returns.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 'tree_killed'
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return 'token_revoked'
end
