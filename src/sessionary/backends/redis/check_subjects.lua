-- KEYS: a subject index, then per member: the session it names
-- ARGV: repair ('1': drop what is found), member 1..n ("<subject>\0<id>")
-- -> the members still in the index that name no stored session of their subject (with
--    repair, dropped)
local found = {}
for i = 2, #ARGV do
  local member = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], member) then
    local cut = string.find(member, '\0', 1, true)
    local subject = cut and string.sub(member, 1, cut - 1)
    if not subject or redis.call('HGET', KEYS[i], 's') ~= subject then
      found[#found + 1] = member
      if ARGV[1] == '1' then redis.call('ZREM', KEYS[1], member) end
    end
  end
end
return found
