-- Analytics (sessionary.sessionize): shared by sessionize.lua, close_idle.lua, vacuum.lua.
-- These are the rules of `Sessionizing` in sessionize.py, line by line; keep them in step.
--
-- KEYS (one project, one hash tag {an:<project>}; every script gets all of them):
--   1 d  hash: device -> its state, cmsgpack (below)
--   2 i  sorted set, the idle index: device -> last event time of its open session; it names
--        exactly the devices with an open session (so ZCARD = open sessions)
--   3 c  sorted set: device -> touched_at, for states without an open session (vacuum)
--   4 s  sorted set: client-chosen event id -> when it was seen (dedup)
--   5 p  hash: profile -> its pointer, cmsgpack {device, session id, ts}
--   6 q  sorted set: profiles whose pointer may name a closed session (vacuum re-checks)
--   7 w  string: the watermark
--   8 o  stream: the outbox; fields h (the hits, as the client encoded them), e (the rest)
-- Every write refreshes the TTL of every key (`ttl` ms): an abandoned project goes away.
--
-- A device state is an array (false stands for None):
--   1 newest  2 touched_at  3 closed_last  4 session id (false: no open session),
--   and with an open session the other fields of its OpenSession (sessionize.py), 5 to 14,
--   the 6 of attribution as one, false (referrer and every utm None) or a list of them:
-- state session: 4 id 5 start 6 last 7 events 8 screen_views 9 revenue 10 version 11 profile_id 12 entry_path 13 exit_path 14 {referrer utm_source utm_medium utm_campaign utm_term utm_content}
--   (tests/analytics/test_row_shape.py holds that line to OpenSession), and
--   15 the profiles the session had before its current one (false or a list; a pointer
--      naming the session may be left behind when it closes: those go to the `q` index)
-- Literal indices, not named locals: Lua 5.1 allows a function 60 upvalues. (Few fields:
-- cmsgpack's cost grows with them, and a state is unpacked and packed per event.)

local NULL = cjson.null
local AFTER, INSIDE, BEFORE, BEYOND, TOO_EARLY = 1, 2, 3, 4, 5
local JOINED, LATE, DUPLICATE, UNATTACHED = 1, 2, 3, 4

-- the step: what the rules read and change, written back by `commit`
local now, timeout, max_length, lateness = 0, 0, false, 0
local base = 0           -- times leave as offsets from it (cjson writes small numbers faster)
local states = {}        -- device -> state | false (not stored); nil: not loaded
local was_closed = {}    -- device -> true: stored without an open session when loaded
local dirty, dirty_list = {}, {}
local pointers = {}      -- profile -> {device, sid, ts} | false; nil: not loaded
local pointers_dirty, pointers_dirty_list = {}, {}
local orphans = {}       -- profiles for the `q` index
local watermark, watermark_moved = false, false
local rows = {}          -- flat: the rows of the sessions closed here (final), then others
local row_numbers = {}   -- flat: their numbers (`row`)
local closed_here = {}   -- session id -> true
local touched, touched_list = {}, {}  -- session id -> device
local started, ended = {}, {}         -- flat: id, time - base, id, time - base, ...

-- numbers leave as JSON numbers while cjson (%.14g) writes them exactly, else as strings
local function exact(n)
  if n < 1e14 and n > -1e14 then return n end
  return string.format('%d', n)
end

local function base36(n)
  local digits, out = '0123456789abcdefghijklmnopqrstuvwxyz', ''
  repeat
    local r = n % 36
    out = string.sub(digits, r + 1, r + 1) .. out
    n = (n - r) / 36
  until n == 0
  return out
end

local function load_states(key, devices)
  for i = 1, #devices, 1000 do
    local last = math.min(i + 999, #devices)
    local found = redis.call('HMGET', key, unpack(devices, i, last))
    for j = 1, #found do
      local device, raw = devices[i + j - 1], found[j]
      if raw then
        local state = cmsgpack.unpack(raw)
        states[device] = state
        if not state[4] then was_closed[device] = true end
      else
        states[device] = false
      end
    end
  end
end

local function load_pointers(key, profiles)
  for i = 1, #profiles, 1000 do
    local last = math.min(i + 999, #profiles)
    local found = redis.call('HMGET', key, unpack(profiles, i, last))
    for j = 1, #found do
      local raw = found[j]
      pointers[profiles[i + j - 1]] = raw and cmsgpack.unpack(raw) or false
    end
  end
end

local function state_of(device)
  local state = states[device]
  if state == nil then
    load_states(KEYS[1], {device})
    state = states[device]
  end
  return state
end

local function pointer_of(profile)
  local found = pointers[profile]
  if found == nil then
    load_pointers(KEYS[5], {profile})
    found = pointers[profile]
  end
  return found
end

local function set_pointer(profile, value)
  pointers[profile] = value
  if not pointers_dirty[profile] then
    pointers_dirty[profile] = true
    pointers_dirty_list[#pointers_dirty_list + 1] = profile
  end
end

local function mark(device)
  if not dirty[device] then
    dirty[device] = true
    dirty_list[#dirty_list + 1] = device
  end
end

-- a row (SessionRow), flat: its strings and `closed` onto `rows`, its numbers onto
-- `row_numbers` (they leave packed as doubles, as the numbers of a batch arrive: cjson
-- formats a number with sprintf, half a row's cost), each in the order below, which
-- analytics.py derives from sessionize.py's SessionRow (ROW_STRINGS, ROW_NUMBERS) and
-- tests/analytics/test_row_shape.py holds these two lines to:
-- row strings: id device_id profile_id entry_path exit_path referrer utm_source utm_medium utm_campaign utm_term utm_content closed
-- row numbers: started_at ended_at event_count screen_view_count revenue version
-- Each entry says how many of each a row has (its `w`), so that a version that knows more
-- fields, or fewer, reads it.
local ROW_WIDTHS = '12 6'
local function row(device, s, closed)
  local k, m = #rows, #row_numbers
  rows[k + 1], rows[k + 2], rows[k + 3] = s[4], device, s[11] or NULL
  rows[k + 4], rows[k + 5], rows[k + 12] = s[12] or NULL, s[13] or NULL, closed
  local a = s[14]
  if a then
    rows[k + 6], rows[k + 7], rows[k + 8] = a[1] or NULL, a[2] or NULL, a[3] or NULL
    rows[k + 9], rows[k + 10], rows[k + 11] = a[4] or NULL, a[5] or NULL, a[6] or NULL
  else
    rows[k + 6], rows[k + 7], rows[k + 8] = NULL, NULL, NULL
    rows[k + 9], rows[k + 10], rows[k + 11] = NULL, NULL, NULL
  end
  row_numbers[m + 1], row_numbers[m + 2], row_numbers[m + 3] = s[5], s[6], s[7]
  row_numbers[m + 4], row_numbers[m + 5], row_numbers[m + 6] = s[8], s[9], s[10]
end

-- little-endian doubles, packed 1000 at a time (a Lua stack holds 8000 values)
local function doubles(values)
  local parts = {}
  for i = 1, #values, 1000 do
    local last = math.min(i + 999, #values)
    parts[#parts + 1] = struct.pack('<' .. string.rep('d', last - i + 1), unpack(values, i, last))
  end
  return table.concat(parts)
end

-- where `ts` falls for the open session of `s` (Sessionizing._fit)
local function fit(s, ts)
  local last = s[6]
  if ts > last then
    if ts - last <= timeout and (not max_length or ts - s[5] <= max_length) then
      return AFTER
    end
    return BEYOND
  end
  local start = s[5]
  if ts >= start then return INSIDE end
  if start - ts <= timeout and (not max_length or last - ts <= max_length) then
    return BEFORE
  end
  return TOO_EARLY
end

-- `att`: the hit's attribution, as in a state (never changed once made: states share it)
local function open(device, s, id, ts, path, att)
  s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11] = id, ts, ts, 0, 0, 0, 0, false
  s[12], s[13], s[14], s[15] = path, path, att, false
  started[#started + 1] = id
  started[#started + 1] = exact(ts - 1 - base)
end

local function move_start(s, ts, path, att)
  s[5], s[12] = ts, path
  if att then s[14] = att end
end

local function count(device, s, ts, view, revenue, profile)
  s[7] = s[7] + 1
  if view then s[8] = s[8] + 1 end
  s[9] = s[9] + revenue
  s[10] = s[10] + 1
  if ts > s[1] then s[1] = ts end
  s[2] = now
  if not watermark or ts > watermark then
    watermark, watermark_moved = ts, true
  end
  mark(device)
  local id = s[4]
  if not touched[id] then
    touched[id] = device
    touched_list[#touched_list + 1] = id
  end
  if profile then  -- identify: the session is the profile's from now on
    local before = s[11]
    if before and before ~= profile then
      local others = s[15] or {}
      local known = false
      for k = 1, #others do
        if others[k] == before then known = true end
      end
      if not known then others[#others + 1] = before end
      s[15] = others
    end
    s[11] = profile
    local p = pointer_of(profile)
    if not p or ts >= p[3] then set_pointer(profile, {device, id, ts}) end
  end
end

local function close(device, s)
  local id = s[4]
  s[10] = s[10] + 1
  row(device, s, true)
  closed_here[id] = true
  ended[#ended + 1] = id
  ended[#ended + 1] = exact(s[6] + 1 - base)
  local profile, others = s[11], s[15]
  s[3] = s[6]
  for k = 15, 5, -1 do s[k] = nil end
  s[4] = false
  s[2] = now
  mark(device)
  if profile then
    local p = pointer_of(profile)
    if p and p[2] == id then set_pointer(profile, false) end
  end
  if others then
    for k = 1, #others do orphans[#orphans + 1] = others[k] end
  end
end

-- close the device's open session if its last event is before `cutoff` (the re-check)
local function close_if_idle(device, cutoff)
  local s = state_of(device)
  if not s or not s[4] or s[6] >= cutoff then return false end
  close(device, s)
  return true
end

-- close the sessions of `due` (devices the idle index named) idle before `cutoff`, with their
-- profiles' pointers loaded in one go; an index entry out of step with its state (never, but
-- heal it) is removed when it names no open session, else moved to the session's last event.
-- -> the number closed, the number of entries removed
local function close_due(due, cutoff)
  load_states(KEYS[1], due)
  local profiles = {}
  for k = 1, #due do
    local s = states[due[k]]
    if s and s[4] and s[11] then profiles[#profiles + 1] = s[11] end
  end
  if #profiles > 0 then load_pointers(KEYS[5], profiles) end
  local closed, removed = 0, 0
  for k = 1, #due do
    local device = due[k]
    if close_if_idle(device, cutoff) then
      closed = closed + 1
    else
      local s = states[device]
      if not s or not s[4] then
        redis.call('ZREM', KEYS[2], device)
        removed = removed + 1
      else
        redis.call('ZADD', KEYS[2], s[6], device)
      end
    end
  end
  return closed, removed
end

local function chunked(command, key, args, per)
  local step = 4000 - 4000 % per
  for i = 1, #args, step do
    redis.call(command, key, unpack(args, i, math.min(i + step - 1, #args)))
  end
end

-- write back what the step changed, and its outbox entry: field e, the JSON array
-- [base (a string), statuses (one digit per hit), [session id, device per hit], rows (`row`'s
-- strings), started, ended] (times as offsets from base); field n, the rows' numbers
-- (`doubles`); field h, `hits`, the client's encoding of the hits (if any).
-- (Entries written before field n held 18 values a row in e: analytics.py reads both.)
local function commit(ttl, hits, statuses, placements)
  local saved, idle, gone, closed, reopened = {}, {}, {}, {}, {}
  for k = 1, #dirty_list do
    local device = dirty_list[k]
    local s = states[device]
    saved[#saved + 1] = device
    saved[#saved + 1] = cmsgpack.pack(s)
    if s[4] then
      idle[#idle + 1] = s[6]
      idle[#idle + 1] = device
      if was_closed[device] then reopened[#reopened + 1] = device end
    else
      gone[#gone + 1] = device
      closed[#closed + 1] = s[2]
      closed[#closed + 1] = device
    end
  end
  if #saved > 0 then chunked('HSET', KEYS[1], saved, 2) end
  if #idle > 0 then chunked('ZADD', KEYS[2], idle, 2) end
  if #gone > 0 then chunked('ZREM', KEYS[2], gone, 1) end
  if #closed > 0 then chunked('ZADD', KEYS[3], closed, 2) end
  if #reopened > 0 then chunked('ZREM', KEYS[3], reopened, 1) end
  local set, unset = {}, {}
  for k = 1, #pointers_dirty_list do
    local profile = pointers_dirty_list[k]
    local p = pointers[profile]
    if p then
      set[#set + 1] = profile
      set[#set + 1] = cmsgpack.pack(p)
    else
      unset[#unset + 1] = profile
    end
  end
  if #set > 0 then chunked('HSET', KEYS[5], set, 2) end
  if #unset > 0 then chunked('HDEL', KEYS[5], unset, 1) end
  if #orphans > 0 then
    local scored = {}
    for k = 1, #orphans do
      scored[#scored + 1] = now
      scored[#scored + 1] = orphans[k]
    end
    chunked('ZADD', KEYS[6], scored, 2)
  end
  if watermark_moved then redis.call('SET', KEYS[7], int(watermark)) end
  if hits or #started > 0 or #ended > 0 then
    for k = 1, #touched_list do
      local id = touched_list[k]
      if not closed_here[id] then
        local device = touched[id]
        local s = states[device]
        if s and s[4] == id then row(device, s, false) end
      end
    end
    local rest = cjson.encode({int(base), statuses or '', placements or {}, rows, started, ended})
    if hits then
      redis.call('XADD', KEYS[8], '*', 'h', hits, 'e', rest, 'n', doubles(row_numbers),
        'w', ROW_WIDTHS)
    else
      redis.call('XADD', KEYS[8], '*', 'e', rest, 'n', doubles(row_numbers), 'w', ROW_WIDTHS)
    end
  end
  for k = 1, 8 do redis.call('PEXPIRE', KEYS[k], ttl) end
end

local function read_watermark()
  local found = redis.call('GET', KEYS[7])
  watermark = found and tonumber(found) or false
end
