-- Void a reservation whose reserve reply was lost (the broker timed out and refused the call):
-- release it if the reserve ran, and if it has not run yet (a stalled Redis runs buffered
-- commands when it resumes), leave a marker so that reserve holds nothing when it does run.
-- ARGV[1] = counter key base "<prefix>:{budget}", ARGV[2] = reservation id, ARGV[3] = TTL (ms)
-- Returns 1 if a held reservation was released, 0 if only the marker was left.
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  return finish(ARGV[2], nil)
end
redis.call('SET', ARGV[1] .. ':void:' .. ARGV[2], '1', 'PX', ARGV[3])
return 0
