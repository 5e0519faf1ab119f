-- KEYS: counter 1..n (one group)
-- ARGV: now, then per counter: value, resets_at, previous, algorithm (whatever ran before goes)
-- Each write comes before any removal, so a Redis refusing writes (out of memory) refuses
-- before anything changed.
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local resets_at = tonumber(ARGV[4 * i - 1])
  if resets_at > now then
    if ARGV[4 * i + 1] == 'fixed' then
      redis.call('HSET', KEYS[i], 'v', ARGV[4 * i - 2], 'r', ARGV[4 * i - 1])
      redis.call('HDEL', KEYS[i], 'p', 'a')
    else
      redis.call('HSET', KEYS[i], 'v', ARGV[4 * i - 2], 'r', ARGV[4 * i - 1],
        'p', ARGV[4 * i], 'a', ARGV[4 * i + 1])
    end
    redis.call('PEXPIRE', KEYS[i], resets_at - now)
  else
    redis.call('DEL', KEYS[i])
  end
end
return #KEYS
