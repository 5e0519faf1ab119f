-- KEYS: a shard's expiry index, then per id: its session, its log
-- ARGV: repair ('1': drop what is found), id 1..n
-- -> {id, score, ...}: the entries still in the index that name no stored session (a session
--    Redis dropped by its TTL before any reaper came, or lost); with repair, dropped with
--    their logs, as `claim` drops them
local found = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and redis.call('EXISTS', KEYS[2 * i - 2]) == 0 then
    found[#found + 1] = id
    found[#found + 1] = score
    if ARGV[1] == '1' then
      redis.call('ZREM', KEYS[1], id)
      redis.call('DEL', KEYS[2 * i - 1])
    end
  end
end
return found
