-- KEYS: session, expiry, subjects, log
-- ARGV: id, now, idle, absolute, grace, data ('' keeps), metadata ('' keeps),
--       subject mode ('keep' | 'set' | 'clear'), subject, expected version ('' any),
--       expires_at cap ('' none), log max_len ('' none), log max_age ('' none),
--       own lifetime mode ('keep' | 'set' | 'clear'), own idle, own absolute ('' not set),
--       session limit max ('' none), its mode ('refuse' | 'evict_oldest'),
--       activity ('1': last seen now, expiry recomputed | '0': both stay, a maintenance write),
--       then 5 values per event to append (see append_events)
-- KEYS beyond the first 4: with a session limit, the limit's 32 keys (see admit)
-- -> {1, fields, {id, fields, ...} evicted, seq...} | {-1} not live | {-2, actual version}
--    | {-3} log closed | {-4} the limit refuses
-- every refusal is decided before anything is written
local now = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'c', 'e', 'v', 's', 'lc')
if not state[1] or tonumber(state[2]) <= now then return {-1} end
if ARGV[10] ~= '' and state[3] ~= ARGV[10] then return {-2, state[3]} end
local appending = #ARGV > 19
if appending and state[5] == '1' then return {-3} end
local evicted = {}
if ARGV[8] == 'set' and ARGV[9] ~= state[4] and ARGV[17] ~= '' then
  evicted = admit(5, ARGV[9], ARGV[1], tonumber(ARGV[17]), ARGV[18], now)
  if not evicted then return {-4} end
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'd', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'm', ARGV[7]) end
local subject = state[4]
if ARGV[8] ~= 'keep' then
  if subject then redis.call('ZREM', KEYS[3], subject .. '\0' .. ARGV[1]) end
  if ARGV[8] == 'set' then
    subject = ARGV[9]
    redis.call('HSET', KEYS[1], 's', subject)
    redis.call('ZADD', KEYS[3], 0, subject .. '\0' .. ARGV[1])
  else
    subject = false
    redis.call('HDEL', KEYS[1], 's')
  end
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
set_own(KEYS[1], ARGV[14], ARGV[15], ARGV[16])
local e = tonumber(state[2])
if ARGV[19] == '1' then
  local own = redis.call('HMGET', KEYS[1], 'oi', 'oa')
  local idle, absolute = ttls_of(own[1], own[2], ARGV[3], ARGV[4])
  e = deadline(tonumber(state[1]), now, idle, absolute)
  if ARGV[11] ~= '' and tonumber(ARGV[11]) < e then e = tonumber(ARGV[11]) end
  redis.call('HSET', KEYS[1], 'l', ARGV[2], 'e', int(e))
end
place(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], e, now, tonumber(ARGV[5]), subject)
local reply = {1, false, evicted}
if appending then
  local fields = log_fields(ARGV, 20)
  local logged = redis.call('HMGET', KEYS[1], unpack(fields))
  append_events(KEYS[1], KEYS[4], ARGV, 20, now, reply, ARGV[12], ARGV[13], fields, logged, 1)
end
reply[2] = redis.call('HGETALL', KEYS[1])
return reply
