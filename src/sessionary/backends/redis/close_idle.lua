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
local closed = close_due(due, cutoff)
commit(tonumber(ARGV[5]), false, false, false)
return closed
