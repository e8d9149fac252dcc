-- Read what the delegation limits see, without changing anything.
-- KEYS[1] = the parent's in-flight sorted set, KEYS[2] = its total children counter,
-- KEYS[3] = the tree's size counter
-- Returns {in flight (unexpired slots only), total children, tree size}.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local size = tonumber(redis.call('GET', KEYS[3]) or '0')
return {in_flight, total, size}
