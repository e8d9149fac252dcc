-- Record the signing key ids of an agent's card; return those its earlier cards did not carry.
-- KEYS[1] = the agent's set of key ids ("" marks an agent whose cards were seen, signed or not)
-- ARGV[1] = TTL seconds, ARGV[2..] = the card's key ids
-- Returns the new key ids, or {} for the agent's first card (which sets what is usual).
local known = redis.call('EXISTS', KEYS[1])
local new = {}
for i = 2, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    new[#new + 1] = ARGV[i]
  end
end
redis.call('SADD', KEYS[1], '')
redis.call('EXPIRE', KEYS[1], ARGV[1])
if known == 0 then
  return {}
end
return new
