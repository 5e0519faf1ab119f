-- KEYS: counter 1..n (one group: one hash tag)
-- ARGV: now, then per counter: amount, limit ('' none), window ms
-- -> {applied (1|0), value 1, resets_at 1, value 2, resets_at 2, ...}
-- All or nothing: if a positive charge would pass its limit, nothing is written.
local now = tonumber(ARGV[1])
local values, resets, running = {}, {}, {}
local refused = false
for i = 1, #KEYS do
  local amount, limit, window = tonumber(ARGV[3 * i - 1]), ARGV[3 * i], tonumber(ARGV[3 * i + 1])
  local found = redis.call('HMGET', KEYS[i], 'v', 'r')
  if found[1] and tonumber(found[2]) > now then
    values[i], resets[i], running[i] = tonumber(found[1]), tonumber(found[2]), true
  else
    values[i], resets[i], running[i] = 0, now + window, false
  end
  if amount > 0 and limit ~= '' and values[i] + amount > tonumber(limit) then refused = true end
end
local reply = {refused and 0 or 1}
for i = 1, #KEYS do
  local amount = tonumber(ARGV[3 * i - 1])
  if not refused and amount ~= 0 and (amount > 0 or running[i]) then
    values[i] = values[i] + amount
    if values[i] < 0 then values[i] = 0 end
    redis.call('HSET', KEYS[i], 'v', int(values[i]), 'r', int(resets[i]))
    redis.call('PEXPIRE', KEYS[i], resets[i] - now)
  end
  reply[2 * i] = int(values[i])
  reply[2 * i + 1] = int(resets[i])
end
return reply
