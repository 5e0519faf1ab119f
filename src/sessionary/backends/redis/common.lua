-- Shared by every script (prepended to each). Conventions:
--   session hash fields: c created_at, l last_seen_at, e expires_at, v version,
--                        d data, m metadata, s subject (absent if none), k:<name> counters
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
local function place(session_key, expiry_key, subjects_key, id, e, now, grace, subject)
  local ttl = e - now + grace
  redis.call('PEXPIRE', session_key, ttl)
  redis.call('ZADD', expiry_key, e, id)
  keep(expiry_key, ttl)
  if subject then keep(subjects_key, ttl) end
end
