-- KEYS: counter 1..n (one group)
-- ARGV: now, then per counter: value, resets_at
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local resets_at = tonumber(ARGV[2 * i + 1])
  if resets_at > now then
    redis.call('HSET', KEYS[i], 'v', ARGV[2 * i], 'r', ARGV[2 * i + 1])
    redis.call('PEXPIRE', KEYS[i], resets_at - now)
  else
    redis.call('DEL', KEYS[i])
  end
end
return #KEYS
