-- KEYS: a shard's expiry index, its subject index, then per id: its session
-- ARGV: repair ('1': index what is missing), id 1..n
-- -> {kind, id, a, b, ...}: 'x' id expires_at score ('' if none): the session is not in the
--    expiry index at its expires_at; 'u' id subject '': its subject's index does not name it.
--    With repair, the entry is (re)written from the record, and the index's TTL kept at least
--    as long as the session's (as `place` does)
local found = {}
local repair = ARGV[1] == '1'
for i = 2, #ARGV do
  local key, id = KEYS[i + 1], ARGV[i]
  local state = redis.call('HMGET', key, 'e', 's')
  if state[1] then
    local ttl = redis.call('PTTL', key)
    local score = redis.call('ZSCORE', KEYS[1], id)
    if not score or tonumber(score) ~= tonumber(state[1]) then
      found[#found + 1] = 'x'
      found[#found + 1] = id
      found[#found + 1] = state[1]
      found[#found + 1] = score or ''
      if repair then
        redis.call('ZADD', KEYS[1], state[1], id)
        if ttl > 0 then keep(KEYS[1], ttl) end
      end
    end
    if state[2] then
      local member = state[2] .. '\0' .. id
      if not redis.call('ZSCORE', KEYS[2], member) then
        found[#found + 1] = 'u'
        found[#found + 1] = id
        found[#found + 1] = state[2]
        found[#found + 1] = ''
        if repair then
          redis.call('ZADD', KEYS[2], 0, member)
          if ttl > 0 then keep(KEYS[2], ttl) end
        end
      end
    end
  end
end
return found
