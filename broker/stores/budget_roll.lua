-- Settle one reservation and reserve the same amounts again under a new id, for the next call
-- of the same budgets: budget_settle then budget_reserve, in one script (decision 0110).
-- ARGV[1] = counter key base, ARGV[2] = the new reservation's id, ARGV[3] = its TTL (ms)
-- ARGV[4..7] = amounts of calls, tokens_in, tokens_out, cost_micro: what the ended call spent,
-- and what the new reservation holds
-- ARGV[8] = the ended reservation's id
-- ARGV[9..] = (scope key, metric, window, limit) per limit of the new reservation, as reserve's
-- Returns {settled, reserved}: settled is budget_settle's reply (1 if the ended reservation was
-- held, 0 if it had ended already) and reserved is budget_reserve's reply for the new id.
local now = now_ms()
local amounts, amount_texts = read_amounts(4)
local settled = finish(ARGV[8], amounts)
if redis.call('EXISTS', ARGV[1] .. ':void:' .. ARGV[2]) == 1 then
  return {settled, {2}}
end
reclaim(now)
return {settled, hold(ARGV[1], ARGV[2], tonumber(ARGV[3]), amounts, amount_texts, 9, now)}
