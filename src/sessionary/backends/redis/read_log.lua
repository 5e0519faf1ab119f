-- KEYS: session, log
-- ARGV: now, after (seq), limit, max_bytes (0: no bound)
-- -> {last seq, closed ('1' or '0'), entries after `after`, the newest entry (or none)}
--    or nil if the session is not live. With max_bytes, the entries end before the one
--    whose data would take them past it (the first is always there); they are read a few at
--    a time, so a page of large events never copies more of the stream than it returns.
local state = redis.call('HMGET', KEYS[1], 'e', 'ln', 'lc')
if not state[1] or tonumber(state[1]) <= tonumber(ARGV[1]) then return false end
local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local start = '(' .. ARGV[2] .. '-0'
local entries
if budget <= 0 then
  entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', limit)
else
  entries = {}
  local total, step, full = 0, 8, false
  while not full and #entries < limit do
    local got = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', math.min(step, limit - #entries))
    for _, entry in ipairs(got) do
      local fields = entry[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'd' then total = total + #fields[j + 1] end
      end
      if #entries > 0 and total > budget then
        full = true
        break
      end
      entries[#entries + 1] = entry
    end
    if #got < step then break end
    start = '(' .. got[#got][1]
    step = step * 2
  end
end
return {state[2] or '0', state[3] or '0', entries,
        redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
