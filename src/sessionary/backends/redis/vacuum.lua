-- Clean up to `limit` of each kind (see VacuumReport): close open sessions whose last event
-- is before now - older_than, forget sessionless states touched before then, pointers that
-- name no open session, and event ids seen dedup ms ago or more.
-- KEYS: the project's keys (see analytics.lua)
-- ARGV: now, older_than, limit, dedup, ttl
-- -> {closed, states, index, pointers, dedup}
now = tonumber(ARGV[1])
base = now
local cutoff, limit, ttl = now - tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local report = {0, 0, 0, 0, 0}

local stuck = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. int(cutoff), 'LIMIT', 0, limit)
if #stuck > 0 then
  report[1], report[3] = close_due(stuck, cutoff)
  commit(ttl, false, false, false)
end

local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. int(cutoff), 'LIMIT', 0, limit)
if #old > 0 then
  local unknown = {}
  for k = 1, #old do
    if states[old[k]] == nil then unknown[#unknown + 1] = old[k] end
  end
  if #unknown > 0 then load_states(KEYS[1], unknown) end
  local forget, drop = {}, {}
  for k = 1, #old do
    local device = old[k]
    local s = states[device]
    if s and not s[4] then
      if s[2] < cutoff then
        forget[#forget + 1] = device
        drop[#drop + 1] = device
      else
        redis.call('ZADD', KEYS[3], s[2], device)  -- out of step (never): heal it
      end
    else
      drop[#drop + 1] = device  -- gone, or open again: no longer a closed state
    end
  end
  if #forget > 0 then chunked('HDEL', KEYS[1], forget, 1) end
  if #drop > 0 then chunked('ZREM', KEYS[3], drop, 1) end
  report[2] = #forget
end

if limit > 0 then
  local suspects = redis.call('ZRANGE', KEYS[6], 0, limit - 1)
  if #suspects > 0 then
    load_pointers(KEYS[5], suspects)
    local forget = {}
    for k = 1, #suspects do
      local p = pointers[suspects[k]]
      if p then
        local s = state_of(p[1])
        if not s or s[4] ~= p[2] then forget[#forget + 1] = suspects[k] end
      end
    end
    if #forget > 0 then chunked('HDEL', KEYS[5], forget, 1) end
    chunked('ZREM', KEYS[6], suspects, 1)
    report[4] = #forget
  end
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', int(now - tonumber(ARGV[4])),
                           'LIMIT', 0, limit)
if #expired > 0 then chunked('ZREM', KEYS[4], expired, 1) end
report[5] = #expired
return report
