-- KEYS: old session, new session, expiry, subjects, old log, new log (one shard: the new id
--       is minted in it); with a session limit, then the limit's 32 keys (see admit)
-- ARGV: old id, new id, now, idle, absolute, grace, subject mode, subject,
--       own lifetime mode ('keep' | 'set' | 'clear'), own idle, own absolute ('' not set),
--       data ('' keeps), metadata ('' keeps), expected version ('' any),
--       session limit max ('' none), its mode ('refuse' | 'evict_oldest')
-- -> {1, fields, {id, fields, ...} evicted} | {-1} old not live | {-2} new id taken
--    | {-3, actual version} | {-4} the limit refuses; every refusal before any write
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'c', 'e', 's', 'v')
if not state[1] or tonumber(state[2]) <= now then return {-1} end
if ARGV[14] ~= '' and state[4] ~= ARGV[14] then return {-3, state[4]} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-2} end
local evicted = {}
if ARGV[7] == 'set' and ARGV[8] ~= state[3] and ARGV[15] ~= '' then
  evicted = admit(7, ARGV[8], ARGV[1], tonumber(ARGV[15]), ARGV[16], now)
  if not evicted then return {-4} end
end
redis.call('RENAME', KEYS[1], KEYS[2])
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('RENAME', KEYS[5], KEYS[6]) end
redis.call('ZREM', KEYS[3], ARGV[1])
local subject = state[3]
if subject then redis.call('ZREM', KEYS[4], subject .. '\0' .. ARGV[1]) end
if ARGV[7] == 'set' then
  subject = ARGV[8]
  redis.call('HSET', KEYS[2], 's', subject)
elseif ARGV[7] == 'clear' then
  subject = false
  redis.call('HDEL', KEYS[2], 's')
end
if subject then redis.call('ZADD', KEYS[4], 0, subject .. '\0' .. ARGV[2]) end
if ARGV[12] ~= '' then redis.call('HSET', KEYS[2], 'd', ARGV[12]) end
if ARGV[13] ~= '' then redis.call('HSET', KEYS[2], 'm', ARGV[13]) end
redis.call('HINCRBY', KEYS[2], 'v', 1)
set_own(KEYS[2], ARGV[9], ARGV[10], ARGV[11])
local own = redis.call('HMGET', KEYS[2], 'oi', 'oa')
local idle, absolute = ttls_of(own[1], own[2], ARGV[4], ARGV[5])
local e = deadline(tonumber(state[1]), now, idle, absolute)
redis.call('HSET', KEYS[2], 'l', ARGV[3], 'e', int(e))
place(KEYS[2], KEYS[3], KEYS[4], KEYS[6], ARGV[2], e, now, tonumber(ARGV[6]), subject)
return {1, redis.call('HGETALL', KEYS[2]), evicted}
