-- Shared by every budget script: the Python side puts it in front of each script's own text,
-- after a line defining COUNTER_GRACE_MS (how long a window's counters outlive the window).
-- Every script gets KEYS[1] = the reservations hash (id -> JSON list of holds) and KEYS[2] =
-- the reservations' expiries (sorted set, id -> ms since the epoch). Counter keys are derived
-- here from a base that carries the same hash tag, so all of them sit in KEYS[1]'s cluster slot.

local METRICS = {'calls', 'tokens_in', 'tokens_out', 'cost_micro'}
local FIXED_WINDOW_S = {minute = 60, hour = 3600, day = 86400}

-- Integers as exact decimal text: Lua's own number-to-string conversion keeps 14 digits only.
-- Zero is spelled out, as -0 would print "-0", which HINCRBY refuses.
local function int(x)
  if x == 0 then
    return '0'
  end
  return string.format('%.0f', x)
end

-- The server's clock, ms since the epoch, so replicas with skewed clocks agree.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Four amounts from ARGV[first..first+3], by metric name, as numbers and as the text given.
local function read_amounts(first)
  local numbers, texts = {}, {}
  for i, metric in ipairs(METRICS) do
    texts[metric] = ARGV[first + i - 1]
    numbers[metric] = tonumber(texts[metric])
  end
  return numbers, texts
end

-- Days since 1970-01-01 of a Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Year and month of a day number since 1970-01-01 (the inverse, civil_from_days).
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- Start and end (epoch seconds, UTC) of the window holding now_s; no end for 'lifetime'.
-- Must equal broker.budgets.model.window_start / window_end (a contract test compares them).
local function window_bounds(window, now_s)
  if window == 'lifetime' then
    return 0, nil
  end
  local size = FIXED_WINDOW_S[window]
  if size then
    local start = math.floor(now_s / size) * size
    return start, start + size
  end
  local y, m = civil_from_days(math.floor(now_s / 86400))
  local next_y, next_m = y, m + 1
  if next_m > 12 then next_y, next_m = y + 1, 1 end
  return days_from_civil(y, m, 1) * 86400, days_from_civil(next_y, next_m, 1) * 86400
end

-- One hash per window of one scope: fields used:<metric>, rsv:<metric>, over:<metric>. The
-- scope key comes last, so any scope name is kept apart from the window and its start.
local function counter_key(base, window, start, scope)
  return base .. ':w:' .. window .. ':' .. int(start) .. ':' .. scope
end

-- End reservation `id`: take its holds off their counters and, given `actual` (numbers by
-- metric), charge min(actual, held) as used and the excess as overage, so spend racing past
-- a reservation never pushes used + reserved over a limit. 1 if it was held, else 0.
local function finish(id, actual)
  local record = redis.call('HGET', KEYS[1], id)
  if not record then
    return 0
  end
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  for _, hold in ipairs(cjson.decode(record)) do
    local key, metric, amount = hold[1], hold[2], tonumber(hold[3])
    -- A counter gone with its window has nothing to correct; writing would revive it untimed.
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'rsv:' .. metric, int(-amount))
      if actual then
        local spent = actual[metric]
        redis.call('HINCRBY', key, 'used:' .. metric, int(math.min(spent, amount)))
        if spent > amount then
          redis.call('HINCRBY', key, 'over:' .. metric, int(spent - amount))
        end
      end
    end
  end
  return 1
end

-- Release every reservation whose expiry is at or before now (ms): their brokers died or
-- forgot them. Each is reclaimed once, so the cost is amortised over the reserves that made them.
-- Returns their ids: with budget shards one reservation may expire on several shards, and the
-- caller counts it once.
local function reclaim(now)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', int(now))
  for _, id in ipairs(ids) do
    finish(id, nil)
  end
  return ids
end

-- Hold `amounts` (numbers, and their texts, by metric) as reservation `id` for `ttl` ms from
-- `now` against every limit in ARGV[first..] ((scope key, metric, window, limit) each, scopes in
-- order, limits in order), or refuse naming the first limit hit. Returns {1, expires_ms}; or
-- {0, scope, metric, window, limit, used, reserved}: nothing changed.
local function hold(base, id, ttl, amounts, amount_texts, first, now)
  local expires = now + ttl
  local holds = {}
  local keep = {}
  for i = first, #ARGV, 4 do
    local scope, metric, window, limit = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local start, stop = window_bounds(window, math.floor(now / 1000))
    local key = counter_key(base, window, start, scope)
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
  for _, one in ipairs(holds) do
    redis.call('HINCRBY', one[1], 'rsv:' .. one[2], one[3])
  end
  for key, ttl_ms in pairs(keep) do
    if redis.call('PTTL', key) < ttl_ms then
      redis.call('PEXPIRE', key, int(ttl_ms))
    end
  end
  redis.call('HSET', KEYS[1], id, cjson.encode(holds))
  redis.call('ZADD', KEYS[2], int(expires), id)
  return {1, int(expires)}
end
