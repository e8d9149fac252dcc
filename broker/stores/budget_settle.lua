-- Settle a reservation: reserved -> used, up to what was held; the excess -> overage.
-- ARGV[1] = reservation id, ARGV[2..5] = actual calls, tokens_in, tokens_out, cost_micro
-- Returns 1 if the reservation was held, 0 if it had ended already (nothing changed).
return finish(ARGV[1], read_amounts(2))
