-- Release a reservation, spending nothing.
-- ARGV[1] = reservation id
-- Returns 1 if the reservation was held, 0 if it had ended already (nothing changed).
return finish(ARGV[1], nil)
