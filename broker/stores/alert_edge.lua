-- Count calls on one edge (or model) and judge them against the edge's own history.
-- KEYS[1] = the edge's hash: b (bucket), c (calls in it), avg (baseline), n (buckets closed),
--           fb (bucket that fired the rate rule), dmax (usual deepest chain), dn (calls seen)
-- ARGV[1] = calls, ARGV[2] = deepest chain among them, ARGV[3] = bucket seconds,
-- ARGV[4] = smoothing, ARGV[5] = rate factor (0: off), ARGV[6] = min calls,
-- ARGV[7] = warm-up buckets, ARGV[8] = depth warm-up calls (0: off), ARGV[9] = TTL seconds
-- Returns {first, rate, baseline, deeper, usual} (rate/deeper 0 when nothing fired).
-- The server's clock dates the buckets, so replicas with skewed clocks agree.
local now = tonumber(redis.call('TIME')[1])
local calls = tonumber(ARGV[1])
local depth = tonumber(ARGV[2])
local bucket = math.floor(now / tonumber(ARGV[3]))
local alpha = tonumber(ARGV[4])
local factor = tonumber(ARGV[5])
local v = redis.call('HMGET', KEYS[1], 'b', 'c', 'avg', 'n', 'fb', 'dmax', 'dn')
local first = 0
if not v[1] then
  first = 1
end
local b = tonumber(v[1] or bucket)
local c = tonumber(v[2] or '0')
local avg = tonumber(v[3] or '0')
local n = tonumber(v[4] or '0')
local fb = tonumber(v[5] or '-1')
local dmax = tonumber(v[6] or '0')
local dn = tonumber(v[7] or '0')
if bucket > b then
  -- Close the bucket that was counting, then the empty ones since (at most 1000 of them).
  avg = (1 - alpha) * avg + alpha * c
  local gap = math.min(bucket - b - 1, 1000)
  if gap > 0 then
    avg = avg * (1 - alpha) ^ gap
  end
  n = n + 1 + gap
  c = 0
  b = bucket
end
c = c + calls
local rate = 0
if factor > 0 and n >= tonumber(ARGV[7]) and c >= tonumber(ARGV[6]) and c > factor * avg
    and fb ~= b then
  rate = c
  fb = b
end
local deeper = 0
local usual = dmax
local warmup = tonumber(ARGV[8])
if warmup > 0 and dn >= warmup and depth > dmax then
  deeper = depth
end
if depth > dmax then
  dmax = depth
end
dn = dn + calls
redis.call('HSET', KEYS[1], 'b', b, 'c', c, 'avg', tostring(avg), 'n', n, 'fb', fb,
  'dmax', dmax, 'dn', dn)
redis.call('EXPIRE', KEYS[1], ARGV[9])
return {first, rate, tostring(avg), deeper, usual}
