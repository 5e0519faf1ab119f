-- KEYS: counter 1..n (one group)
-- ARGV: now, then per counter: value, resets_at, previous, algorithm, window ms, limit ('' none)
-- (whatever ran before goes). Each write comes before any removal, so a Redis refusing
-- writes (out of memory) refuses before anything changed.
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local at = 6 * i - 4
  local resets_at = tonumber(ARGV[at + 1])
  if resets_at > now then
    local fields = {'v', ARGV[at], 'r', ARGV[at + 1], 'w', ARGV[at + 4], 'l', ARGV[at + 5]}
    if ARGV[at + 3] == 'fixed' then
      redis.call('HSET', KEYS[i], unpack(fields))
      redis.call('HDEL', KEYS[i], 'p', 'a')
    else
      fields[#fields + 1], fields[#fields + 2] = 'p', ARGV[at + 2]
      fields[#fields + 1], fields[#fields + 2] = 'a', ARGV[at + 3]
      redis.call('HSET', KEYS[i], unpack(fields))
    end
    redis.call('PEXPIRE', KEYS[i], resets_at - now)
  else
    redis.call('DEL', KEYS[i])
  end
end
return #KEYS
