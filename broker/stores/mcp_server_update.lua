-- Replace one MCP server's record only if it is still registered (an update racing a removal
-- must not bring the server back).
-- KEYS[1] = the MCP server hash (name -> record JSON)
-- ARGV[1] = server name, ARGV[2] = the new record JSON
-- Returns 1 if replaced, 0 if no server has that name.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
