-- KEYS: session
-- ARGV: now, counter field ('k:<name>'), amount, limit ('' none)
-- -> {1, used} allowed | {0, used} refused | {-1} not live
local state = redis.call('HMGET', KEYS[1], 'e', ARGV[2])
if not state[1] or tonumber(state[1]) <= tonumber(ARGV[1]) then return {-1} end
local used = state[2] or '0'
local amount = tonumber(ARGV[3])
if amount < 0 then
  local left = tonumber(used) + amount
  if left < 0 then left = 0 end
  used = int(left)
  redis.call('HSET', KEYS[1], ARGV[2], used)
  return {1, used}
end
if ARGV[4] ~= '' and tonumber(used) + amount > tonumber(ARGV[4]) then return {0, used} end
if amount == 0 then return {1, used} end
return {1, redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])}
