-- KEYS: session, log
-- ARGV: now, max_len ('' none), max_age ('' none), then 5 values per event (see append_events)
-- -> {1, seq...} (0 for a producer's retry) | {-1} not live | {-2} log closed
local now = tonumber(ARGV[1])
local fields = log_fields(ARGV, 4)
local state = redis.call('HMGET', KEYS[1], 'e', 'lc', unpack(fields))
if not state[1] or tonumber(state[1]) <= now then return {-1} end
if state[2] == '1' then return {-2} end
local reply = {1}
append_events(KEYS[1], KEYS[2], ARGV, 4, now, reply, ARGV[2], ARGV[3], fields, state, 3)
return reply
