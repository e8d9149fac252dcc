-- Reserve amounts against every limit of every scope, or refuse naming the first limit hit.
-- ARGV[1] = counter key base "<prefix>:{budget}", ARGV[2] = reservation id, ARGV[3] = TTL (ms)
-- ARGV[4..7] = amounts of calls, tokens_in, tokens_out, cost_micro
-- ARGV[8..] = (scope key, metric, window, limit) per limit, scopes in order, limits in order
-- Returns {1, expires_ms}; or {0, scope, metric, window, limit, used, reserved}: nothing changed;
-- or {2}: the broker already voided this reservation (its reply was lost), nothing changed.
local now = now_ms()
if redis.call('EXISTS', ARGV[1] .. ':void:' .. ARGV[2]) == 1 then
  return {2}
end
-- Dead brokers' reservations must never keep a limit blocked.
reclaim(now)
local amounts, amount_texts = read_amounts(4)
return hold(ARGV[1], ARGV[2], tonumber(ARGV[3]), amounts, amount_texts, 8, now)
