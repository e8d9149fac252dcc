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
local expires = now + tonumber(ARGV[3])
local holds = {}
local keep = {}
for i = 8, #ARGV, 4 do
  local scope, metric, window, limit = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local start, stop = window_bounds(window, math.floor(now / 1000))
  local key = counter_key(ARGV[1], window, start, scope)
  local counts = redis.call('HMGET', key, 'used:' .. metric, 'rsv:' .. metric)
  local used, reserved = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
  if used + reserved + amounts[metric] > limit then
    return {0, scope, metric, window, ARGV[i + 3], int(used), int(reserved)}
  end
  holds[#holds + 1] = {key, metric, amount_texts[metric]}
  -- A window's counters outlive its end and every reservation held in it, plus a grace period.
  if stop then
    keep[key] = math.max(keep[key] or 0, math.max(stop * 1000, expires) + COUNTER_GRACE_MS - now)
  end
end
-- Every limit has room: hold the amounts in all of them.
for _, hold in ipairs(holds) do
  redis.call('HINCRBY', hold[1], 'rsv:' .. hold[2], hold[3])
end
for key, ttl in pairs(keep) do
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, int(ttl))
  end
end
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(holds))
redis.call('ZADD', KEYS[2], int(expires), ARGV[2])
return {1, int(expires)}
