-- KEYS: session, expiry, subjects, log
-- ARGV: id
-- -> the fields it had, or nil if there was no such session
local fields = redis.call('HGETALL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
if #fields == 0 then return false end
local subject = redis.call('HGET', KEYS[1], 's')
if subject then redis.call('ZREM', KEYS[3], subject .. '\0' .. ARGV[1]) end
redis.call('DEL', KEYS[1])
return fields
