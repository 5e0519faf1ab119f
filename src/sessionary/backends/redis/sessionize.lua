-- Place a batch of hits (Sessionizing.ingest) and write its outbox entry, in one step.
-- KEYS: the project's keys (see analytics.lua)
-- ARGV: 1 now, 2 nonce, 3 timeout, 4 max_length ('' none), 5 lateness, 6 dedup, 7 ttl,
--       8 the hits as the client encoded them (stored verbatim in the outbox),
--       9 hits, 10 attribution groups, 11 device lists,
--       12 numbers, little-endian doubles: per hit 7: ts, 2 * revenue + (1 for a screen
--          view), device, profile, path, client-chosen id (checked for duplicates),
--          attribution group (0: referrer and every utm None); per attribution group 6:
--          referrer, utm_source, _medium, _campaign, _term, _content; per device list: its
--          length, then the candidates, most preferred first. A string is its index k in
--          the strings (ARGV[12 + k]), 0 is None; a device -k is the k-th device list.
--       13.. the strings
-- -> {joined, late, duplicate, unattached, started, ended, the indices of the late hits...,
--     of the duplicate hits...} (0-based, ascending; IngestOutcome)
now = tonumber(ARGV[1])
local nonce = ARGV[2]
timeout = tonumber(ARGV[3])
max_length = ARGV[4] ~= '' and tonumber(ARGV[4])
lateness = tonumber(ARGV[5])
local dedup_ms, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local n, n_groups, n_lists = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])

-- the numbers, in one array (unpacked 1000 at a time: a Lua stack holds 8000 values)
local numbers, raw = {}, ARGV[12]
local size, pos = #raw / 8, 1
for first = 1, size, 1000 do
  local chunk = {struct.unpack('<' .. string.rep('d', math.min(1000, size - first + 1)), raw, pos)}
  pos = chunk[#chunk]
  for k = 1, #chunk - 1 do numbers[first + k - 1] = chunk[k] end
end
base = n > 0 and numbers[1] or now  -- near the times of the rows (see analytics.lua)
local function text(k)  -- the k-th string, or false
  return k > 0 and ARGV[12 + k]
end
local groups, lists = {}, {}
local at = 7 * n
for g = 1, n_groups do  -- as a state holds them (analytics.lua)
  groups[g] = {text(numbers[at + 1]), text(numbers[at + 2]), text(numbers[at + 3]),
               text(numbers[at + 4]), text(numbers[at + 5]), text(numbers[at + 6])}
  at = at + 6
end
for l = 1, n_lists do
  local size, list = numbers[at + 1], {}
  for k = 1, size do list[k] = ARGV[12 + numbers[at + 1 + k]] end
  lists[l] = list
  at = at + size + 1
end

-- load what the hits may touch: their devices, their profiles' pointers and the devices
-- those name, the ids seen lately
local devices, wanted, profiles, asked, ids = {}, {}, {}, {}, {}
local function want(device)
  if not wanted[device] then
    wanted[device] = true
    devices[#devices + 1] = device
  end
end
for b = 0, 7 * (n - 1), 7 do
  local device = numbers[b + 3]
  if device > 0 then
    want(ARGV[12 + device])
  elseif device < 0 then
    want(lists[-device][1])  -- the others if it has no open session
  end
  local profile = numbers[b + 4]
  if profile > 0 and not asked[profile] then
    asked[profile] = true
    profiles[#profiles + 1] = ARGV[12 + profile]
  end
  if numbers[b + 6] > 0 then ids[#ids + 1] = ARGV[12 + numbers[b + 6]] end
end
if #devices > 0 then load_states(KEYS[1], devices) end
local others = {}
for l = 1, n_lists do
  local list = lists[l]
  local preferred = states[list[1]]
  if not preferred or not preferred[4] then
    for k = 2, #list do
      if states[list[k]] == nil and not wanted[list[k]] then
        wanted[list[k]] = true
        others[#others + 1] = list[k]
      end
    end
  end
end
if #others > 0 then load_states(KEYS[1], others) end
if #profiles > 0 then
  load_pointers(KEYS[5], profiles)
  local more = {}
  for k = 1, #profiles do
    local p = pointers[profiles[k]]
    if p and states[p[1]] == nil and not wanted[p[1]] then
      wanted[p[1]] = true
      more[#more + 1] = p[1]
    end
  end
  if #more > 0 then load_states(KEYS[1], more) end
end
local seen, new_seen = {}, {}
for i = 1, #ids, 1000 do
  local last = math.min(i + 999, #ids)
  local found = redis.call('ZMSCORE', KEYS[4], unpack(ids, i, last))
  for j = 1, #found do
    if found[j] then seen[ids[i + j - 1]] = tonumber(found[j]) end
  end
end
read_watermark()

-- Sessionizing._place and _place_by_profile -> status, device, session id
local function place(index, b)
  local ts, kind = numbers[b + 1], numbers[b + 2]
  local view = kind % 2
  local revenue = (kind - view) / 2
  local id = numbers[b + 6]
  if id > 0 then
    id = ARGV[12 + id]
    local seen_at = seen[id]
    if seen_at and now - seen_at < dedup_ms then return DUPLICATE end
    seen[id] = now
    new_seen[#new_seen + 1] = id
  end
  local profile, path, group = text(numbers[b + 4]), text(numbers[b + 5]), numbers[b + 7]
  local att = group > 0 and groups[group]
  local device, s = numbers[b + 3], nil
  if device == 0 then  -- profile only: the profile's open session, if the timing fits
    if not profile then return UNATTACHED end
    local p = pointer_of(profile)
    if not p then return UNATTACHED end
    device = p[1]
    s = state_of(device)
    if not s or not s[4] or s[4] ~= p[2] then  -- it named a session that is gone
      set_pointer(profile, false)
      return UNATTACHED
    end
    if ts < s[1] - lateness then return LATE, device end
    local where = fit(s, ts)
    if where == AFTER then
      s[6], s[13] = ts, path
    elseif where == BEFORE then
      if s[3] and ts <= s[3] then return LATE, device end  -- never overlapping a closed one
      move_start(s, ts, path, att)
    elseif where ~= INSIDE then
      return UNATTACHED  -- a server-side event never opens or splits one
    end
    count(device, s, ts, view == 1, revenue, profile)
    return JOINED, device, s[4]
  end
  if device < 0 then  -- an open session under another candidate?
    local list = lists[-device]
    device = list[1]
    s = states[device]
    if not s or not s[4] then
      for k = 2, #list do
        local found = state_of(list[k])
        if found and found[4] then
          device, s = list[k], found
          break
        end
      end
    end
  else
    device = ARGV[12 + device]
    s = states[device]
  end
  if not s then
    s = {ts, now, false, false}
    states[device] = s
  elseif ts < s[1] - lateness then
    return LATE, device
  end
  if not s[4] then
    if s[3] and ts <= s[3] then return LATE, device end  -- a closed session never reopens
    open(device, s, nonce .. base36(index), ts, path, att)
  else
    local where = fit(s, ts)
    if where == AFTER then
      s[6], s[13] = ts, path
    elseif where == BEFORE then
      if s[3] and ts <= s[3] then return LATE, device end  -- sessions never overlap
      move_start(s, ts, path, att)
    elseif where == BEYOND then
      close(device, s)
      open(device, s, nonce .. base36(index), ts, path, att)
    elseif where == TOO_EARLY then
      return LATE, device
    end
  end
  count(device, s, ts, view == 1, revenue, profile)
  return JOINED, device, s[4]
end

local statuses, placements, counts = {}, {}, {0, 0, 0, 0}
for index = 0, n - 1 do
  local status, device, id = place(index, 7 * index)
  counts[status] = counts[status] + 1
  statuses[index + 1] = status
  placements[2 * index + 1], placements[2 * index + 2] = id or NULL, device or NULL
end

if #new_seen > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', int(now - dedup_ms))  -- forgotten anyway
  local scored = {}
  for k = 1, #new_seen do
    scored[2 * k - 1] = now
    scored[2 * k] = new_seen[k]
  end
  chunked('ZADD', KEYS[4], scored, 2)
end
commit(ttl, n > 0 and ARGV[8], table.concat(statuses), placements)
local reply = {counts[1], counts[2], counts[3], counts[4], #started / 2, #ended / 2}
if counts[LATE] + counts[DUPLICATE] > 0 then  -- which they were (none, mostly: no scan then)
  local late, duplicate = 6, 6 + counts[LATE]
  for index = 1, n do
    local status = statuses[index]
    if status == LATE then
      late = late + 1
      reply[late] = index - 1
    elseif status == DUPLICATE then
      duplicate = duplicate + 1
      reply[duplicate] = index - 1
    end
  end
end
return reply
