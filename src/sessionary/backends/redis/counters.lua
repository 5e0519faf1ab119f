-- KEYS: counter 1..n (one group: one hash tag)
-- ARGV: now, then per counter: amount, limit ('' none), window ms, algorithm
-- -> {applied (1|0), then per counter: value, resets_at, previous, algorithm}
-- All or nothing: if a positive charge would pass its limit, nothing is written. The
-- arithmetic is contract.plan_charges' (see docs/quotas.md); every product stays below 2^53
-- because limit * window <= 2^52 for sliding and gcra counters.
-- A hash: v value, r resets_at, p previous (sliding), a algorithm (absent: fixed), w window
-- ms and l limit ('' or absent: none) of the charge that last wrote it.
local now = tonumber(ARGV[1])

-- ceil(a / b) for integers 0 <= a, 1 <= b, exact while a + b <= 2^53
local function ceil_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if q * b < a then q = q + 1 end
  return q
end

local function gcra_level(value, resets, limit, window)
  local ahead = resets - now
  if ahead <= 0 then return 0 end
  if ahead > window then return limit * window end
  return math.max(0, ahead * limit - value)
end

local n = #KEYS
local amounts, limits, windows, algos = {}, {}, {}, {}
local values, resets, previous, running, stored = {}, {}, {}, {}, {}
local refused = false
for i = 1, n do
  amounts[i], limits[i] = tonumber(ARGV[4 * i - 2]), ARGV[4 * i - 1]
  windows[i], algos[i] = tonumber(ARGV[4 * i]), ARGV[4 * i + 1]
  local window, algo = windows[i], algos[i]
  local found = redis.call('HMGET', KEYS[i], 'v', 'r', 'p', 'a')
  running[i] = found[1] and tonumber(found[2]) > now
  stored[i] = found[4] or 'fixed'
  values[i], resets[i], previous[i] = 0, now + window, 0
  if running[i] and stored[i] ~= algo then
    values[i], resets[i], previous[i] = tonumber(found[1]), tonumber(found[2]), tonumber(found[3] or 0)
    algos[i] = stored[i]
    refused = true
  elseif algo == 'fixed' then
    if running[i] then values[i], resets[i] = tonumber(found[1]), tonumber(found[2]) end
  elseif algo == 'gcra' then
    resets[i] = now
    if running[i] then values[i], resets[i] = tonumber(found[1]), tonumber(found[2]) end
  else
    local ends = now - math.fmod(now, window) + window
    resets[i] = ends + window
    if running[i] and tonumber(found[2]) - window == ends then
      values[i], previous[i] = tonumber(found[1]), tonumber(found[3] or 0)
    elseif running[i] and tonumber(found[2]) == ends then
      previous[i] = tonumber(found[1])
    end
  end
  if not refused and amounts[i] > 0 and limits[i] ~= '' then
    local limit, used = tonumber(limits[i]), values[i]
    if algo == 'sliding' then
      used = values[i] + ceil_div(math.min(previous[i], limit) * (resets[i] - window - now), window)
    elseif algo == 'gcra' then
      used = ceil_div(gcra_level(values[i], resets[i], limit, window), window)
    end
    if used + amounts[i] > limit then refused = true end
  end
end

local reply = {refused and 0 or 1}
for i = 1, n do
  local amount, algo, window = amounts[i], algos[i], windows[i]
  if not refused and amount ~= 0 and (amount > 0 or running[i]) then
    if algo == 'gcra' then
      local limit = tonumber(limits[i])
      local level = gcra_level(values[i], resets[i], limit, window)
      if amount > 0 then
        level = level + amount * window
      else
        level = math.max(0, level - math.min(-amount, limit) * window)
      end
      local ahead = 0
      if limit > 0 then ahead = ceil_div(level, limit) end
      values[i], resets[i] = ahead * limit - level, now + ahead
    else
      values[i] = values[i] + amount
      if values[i] < 0 then values[i] = 0 end
    end
    -- w, l: the charge's rate ('' no limit), kept for listings (scan_counters), never read
    -- here; written with the rest, so a charge costs no more calls than before
    local fields = {'v', int(values[i]), 'r', int(resets[i]), 'w', int(window), 'l', limits[i]}
    local gone = {}
    if algo ~= 'fixed' then
      fields[#fields + 1], fields[#fields + 2] = 'p', int(previous[i])
      fields[#fields + 1], fields[#fields + 2] = 'a', algo
    elseif not running[i] then  -- a new window: whatever an earlier algorithm left goes
      gone[#gone + 1], gone[#gone + 2] = 'p', 'a'
    end
    redis.call('HSET', KEYS[i], unpack(fields))
    -- after the write, so a Redis refusing writes refuses before anything changed
    if #gone > 0 then redis.call('HDEL', KEYS[i], unpack(gone)) end
    redis.call('PEXPIRE', KEYS[i], resets[i] - now)
  end
  reply[4 * i - 2] = int(values[i])
  reply[4 * i - 1] = int(resets[i])
  reply[4 * i] = int(previous[i])
  reply[4 * i + 1] = algo
end
return reply
