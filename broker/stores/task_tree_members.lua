-- List a task tree's unexpired tasks, by the server's clock (the one task_tree_add.lua dates by).
-- KEYS[1] = the tree's task sorted set (member -> expiry, ms since the epoch)
-- Returns the members (JSON [agent, task_id]) that have not expired.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf')
