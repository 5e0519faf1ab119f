-- KEYS: session, expiry, subjects, log
-- ARGV: id, now, idle ('' none), absolute ('' none), grace
-- -> the session's fields after the touch, or nil if absent or expired
local now = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'c', 'e', 's', 'oi', 'oa')
if not state[1] or tonumber(state[2]) <= now then return false end
local idle, absolute = ttls_of(state[4], state[5], ARGV[3], ARGV[4])
local e = deadline(tonumber(state[1]), now, idle, absolute)
redis.call('HSET', KEYS[1], 'l', ARGV[2], 'e', int(e))
place(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], e, now, tonumber(ARGV[5]), state[3])
return redis.call('HGETALL', KEYS[1])
