-- Shared by every script (prepended to each). Conventions:
--   session hash fields: c created_at, l last_seen_at, e expires_at, v version,
--                        d data, m metadata, s subject (absent if none), k:<name> counters,
--                        ln last log seq, lc "1" once the log is closed,
--                        p:<producer> the last seq appended by that producer,
--                        oi, oa the session's own idle and absolute ttl ("remember me"), both
--                        present or both absent ('' = not set); absent: the namespace's policy
--   log: a stream of the session's events, ids "<seq>-0", fields t type, d data, ts, f final;
--        it lives exactly as long as the session key
--   expiry index: sorted set of session ids scored by expires_at
--   subject index: sorted set of "<subject>\0<id>" members, all scored 0 (read by lex range)
-- Every key a script touches is passed in KEYS and shares one hash tag.

local function int(n)
  return string.format('%d', n)
end

-- expires_at = min(now + idle, created + absolute), each optional ('' = not set)
local function deadline(created, now, idle, absolute)
  local e = nil
  if idle ~= '' then e = now + tonumber(idle) end
  if absolute ~= '' then
    local cap = created + tonumber(absolute)
    if e == nil or cap < e then e = cap end
  end
  return e
end

-- the idle and absolute ttls a session lives by: its own (`state_oi`, `state_oa`: its oi and oa
-- fields, false when absent) if it has one, else the namespace's policy (`idle`, `absolute`)
local function ttls_of(state_oi, state_oa, idle, absolute)
  if state_oi then return state_oi, state_oa end
  return idle, absolute
end

-- change a session's own lifetime: mode 'keep' | 'set' (to `oi`, `oa`) | 'clear' (back to the
-- namespace's policy)
local function set_own(session_key, mode, oi, oa)
  if mode == 'set' then
    redis.call('HSET', session_key, 'oi', oi, 'oa', oa)
  elseif mode == 'clear' then
    redis.call('HDEL', session_key, 'oi', 'oa')
  end
end

-- make `key` live at least `ttl` more ms; never shortens a TTL, always replaces "no TTL"
local function keep(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -1 or (current >= 0 and current < ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- after a write that set expires_at = e: the session key, its expiry entry, and the TTLs of
-- the indexes that name it (a key's TTL runs `grace` ms past expires_at, so a reaper can
-- still read what it expires)
local function place(session_key, expiry_key, subjects_key, log_key, id, e, now, grace, subject)
  local ttl = e - now + grace
  redis.call('PEXPIRE', session_key, ttl)
  redis.call('PEXPIRE', log_key, ttl)  -- a no-op while the session has no log
  redis.call('ZADD', expiry_key, e, id)
  keep(expiry_key, ttl)
  if subject then keep(subjects_key, ttl) end
end

-- the session fields append_events needs: 'ln', then 'p:<producer>' for each producer of
-- the events at ARGV[from..] (the caller reads them in the HMGET of its own fields)
local function log_fields(argv, from)
  local fields, named = {'ln'}, {}
  for base = from, #argv, 5 do
    local producer = argv[base + 2]
    if producer ~= '' and not named[producer] then
      named[producer] = true
      fields[#fields + 1] = 'p:' .. producer
    end
  end
  return fields
end

-- append events to a live, open session's log: ARGV[from..] holds 5 values per event (type,
-- data, producer or '', producer seq or '', '1' if final); adds each new seq to `reply`,
-- or 0 for a producer's retry, which is not stored again. `state[at..]`: the `fields`
-- (see log_fields) as HMGET read them. The log keeps its newest max_len events ('' no
-- bound; each XADD trims once the log ever held more) and none older than max_age ms but
-- the newest ('' none). One XADD per event and one HSET in all: in a script each call
-- costs more than the command itself.
local function append_events(session_key, log_key, argv, from, now, reply, max_len, max_age,
                             fields, state, at)
  local had = tonumber(state[at] or '0')
  local last, ts, cap = had, int(now), max_len ~= '' and tonumber(max_len)
  local latest, stored = {}, {}  -- per producer field: its last seq (number, and as sent)
  for i = 2, #fields do latest[fields[i]] = tonumber(state[at + i - 1] or '0') end
  local writes = {'ln', false}
  for base = from, #argv, 5 do
    local field, seq = argv[base + 2], argv[base + 3]
    if field ~= '' then field = 'p:' .. field end
    if field ~= '' and tonumber(seq) <= latest[field] then
      reply[#reply + 1] = 0
    else
      if field ~= '' then latest[field], stored[field] = tonumber(seq), seq end
      last = last + 1
      local entry = {'t', argv[base], 'd', argv[base + 1], 'ts', ts}
      if argv[base + 4] == '1' then
        entry[7], entry[8] = 'f', '1'
        writes[#writes + 1], writes[#writes + 2] = 'lc', '1'
      end
      if cap and last > cap then
        redis.call('XADD', log_key, 'MAXLEN', max_len, int(last) .. '-0', unpack(entry))
      else
        redis.call('XADD', log_key, int(last) .. '-0', unpack(entry))
      end
      reply[#reply + 1] = last
    end
  end
  if last == had then return end  -- every event a retry: nothing changed
  writes[2] = int(last)
  for field, seq in pairs(stored) do writes[#writes + 1], writes[#writes + 2] = field, seq end
  redis.call('HSET', session_key, unpack(writes))
  -- a log is created by its first event, and lives exactly as long as its session
  if had == 0 then redis.call('PEXPIRE', log_key, redis.call('PTTL', session_key)) end
  if max_age ~= '' then
    local cutoff = now - tonumber(max_age)
    while true do
      local oldest = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 2)
      if #oldest < 2 then break end
      local entry_fields, entry_ts = oldest[1][2], nil
      for i = 1, #entry_fields, 2 do
        if entry_fields[i] == 'ts' then entry_ts = tonumber(entry_fields[i + 1]) end
      end
      if entry_ts >= cutoff then break end
      redis.call('XDEL', log_key, oldest[1][1])
    end
  end
end

-- a session limit ("max sessions per subject"), for a namespace kept in one hash slot:
-- KEYS[first] is its subject index (one for every shard), KEYS[first + 1 + shard] each
-- shard's expiry index. Makes room for one more live session of `subject` beside `self_id`
-- (which is not counted): returns false when the `max` others are live and `mode` is
-- 'refuse'; else removes the least recently active others beyond max - 1 (ties: created
-- first, then id) and returns them as {id, fields, ...}. Expired sessions neither count nor go.
local function admit(first, subject, self_id, max, mode, now)
  local live = {}
  local low, high = '[' .. subject .. '\0', '(' .. subject .. '\1'
  for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[first], low, high)) do
    local id = string.sub(member, #subject + 2)
    if id ~= self_id then
      -- its shard: where its last character is among the 16 an id ends with (ids._SHARD_CHARS)
      local shard = string.find('AEIMQUYcgkosw048', string.sub(id, -1), 1, true) - 1
      local expiry = KEYS[first + 1 + shard]
      local base = string.sub(expiry, 1, -2)  -- "<tag>:" of the shard's keys
      local state = redis.call('HMGET', base .. 's:' .. id, 'l', 'c', 'e', 's')
      if state[3] and tonumber(state[3]) > now and state[4] == subject then
        live[#live + 1] = {tonumber(state[1]), tonumber(state[2]), id, base}
      end
    end
  end
  local excess = #live - max + 1
  if excess <= 0 then return {} end
  if mode == 'refuse' then return false end
  table.sort(live, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  local evicted = {}
  for i = 1, excess do
    local id, base = live[i][3], live[i][4]
    local key = base .. 's:' .. id
    evicted[#evicted + 1] = id
    evicted[#evicted + 1] = redis.call('HGETALL', key)
    redis.call('DEL', key, base .. 'l:' .. id)
    redis.call('ZREM', base .. 'x', id)
    redis.call('ZREM', KEYS[first], subject .. '\0' .. id)
  end
  return evicted
end
