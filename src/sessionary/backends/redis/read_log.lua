-- KEYS: session, log
-- ARGV: now, after (seq), limit
-- -> {last seq, closed ('1' or '0'), entries after `after`, the newest entry (or none)}
--    or nil if the session is not live
local state = redis.call('HMGET', KEYS[1], 'e', 'ln', 'lc')
if not state[1] or tonumber(state[1]) <= tonumber(ARGV[1]) then return false end
local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+', 'COUNT', ARGV[3])
return {state[2] or '0', state[3] or '0', entries,
        redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
