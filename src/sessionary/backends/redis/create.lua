-- KEYS: session, expiry, subjects, log; with a session limit, then the limit's 32 keys (see
--       admit)
-- ARGV: id, created_at, last_seen_at, expires_at, version, data, metadata, subject ('' none), now,
--       grace, own lifetime mode ('keep' none | 'set'), own idle, own absolute ('' not set),
--       session limit max ('' none), its mode ('refuse' | 'evict_oldest')
-- -> {1, {id, fields, ...} evicted} created | {0} the id is taken | {-4} the limit refuses
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local subject = nil
if ARGV[8] ~= '' then subject = ARGV[8] end
local evicted = {}
if subject and ARGV[14] ~= '' then
  evicted = admit(5, subject, ARGV[1], tonumber(ARGV[14]), ARGV[15], tonumber(ARGV[9]))
  if not evicted then return {-4} end
end
redis.call('HSET', KEYS[1], 'c', ARGV[2], 'l', ARGV[3], 'e', ARGV[4], 'v', ARGV[5],
           'd', ARGV[6], 'm', ARGV[7])
set_own(KEYS[1], ARGV[11], ARGV[12], ARGV[13])
if subject then
  redis.call('HSET', KEYS[1], 's', subject)
  redis.call('ZADD', KEYS[3], 0, subject .. '\0' .. ARGV[1])
end
place(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[9]),
      tonumber(ARGV[10]), subject)
return {1, evicted}
