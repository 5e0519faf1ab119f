-- Close up to `limit` sessions idle past the cutoff, the least recent first (ties by device).
-- KEYS: the project's keys (see analytics.lua)
-- ARGV: now, timeout, reap_lag, limit, ttl
-- -> the number closed
now, timeout = tonumber(ARGV[1]), tonumber(ARGV[2])
base = now
read_watermark()
local cutoff = now - timeout - tonumber(ARGV[3])  -- Rules.idle_cutoff
if watermark and watermark - timeout > cutoff then cutoff = watermark - timeout end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. int(cutoff), 'LIMIT', 0, ARGV[4])
if #due == 0 then return 0 end
load_states(KEYS[1], due)
local profiles = {}
for k = 1, #due do
  local s = states[due[k]]
  if s and s[4] and s[11] then profiles[#profiles + 1] = s[11] end
end
if #profiles > 0 then load_pointers(KEYS[5], profiles) end
local closed = 0
for k = 1, #due do
  local device = due[k]
  if close_if_idle(device, cutoff) then
    closed = closed + 1
  else  -- the index was out of step with the state (never, but heal it)
    local s = states[device]
    if not s or not s[4] then
      redis.call('ZREM', KEYS[2], device)
    else
      redis.call('ZADD', KEYS[2], s[6], device)
    end
  end
end
commit(tonumber(ARGV[5]), false, false, false)
return closed
