-- KEYS: expiry, subjects, then per due id of this shard: session, log
-- ARGV: now, id 1..n
-- -> {id, fields, ...} of the sessions this call claimed: each expired session is returned
--    by exactly one claim, and one touched since it was seen as due is left alone
local now = tonumber(ARGV[1])
local claimed = {}
for i = 1, #ARGV - 1 do
  local key, log, id = KEYS[2 * i + 1], KEYS[2 * i + 2], ARGV[i + 1]
  local state = redis.call('HMGET', key, 'e', 's')
  if not state[1] then
    redis.call('ZREM', KEYS[1], id)  -- vanished by Redis TTL before any reaper came
    redis.call('DEL', log)
  elseif tonumber(state[1]) <= now then
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = redis.call('HGETALL', key)
    redis.call('DEL', key, log)
    redis.call('ZREM', KEYS[1], id)
    if state[2] then redis.call('ZREM', KEYS[2], state[2] .. '\0' .. id) end
  end
end
return claimed
