-- KEYS: expiry, subjects, then per session the index named in this shard: session, log
-- ARGV: subject, id 1..n
-- -> {id, fields, id, fields, ...} of the sessions removed
local removed = {}
for i = 1, #ARGV - 1 do
  local key, log, id = KEYS[2 * i + 1], KEYS[2 * i + 2], ARGV[i + 1]
  local subject = redis.call('HGET', key, 's')
  if subject == ARGV[1] then
    removed[#removed + 1] = id
    removed[#removed + 1] = redis.call('HGETALL', key)
    redis.call('DEL', key, log)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], ARGV[1] .. '\0' .. id)
  elseif redis.call('EXISTS', key) == 0 then  -- gone already (Redis TTL): drop the entries
    redis.call('DEL', log)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], ARGV[1] .. '\0' .. id)
  end  -- else the session has another subject by now: not ours to revoke
end
return removed
