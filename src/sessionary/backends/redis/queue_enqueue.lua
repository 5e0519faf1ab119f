-- KEYS: see queue.lua
-- ARGV: item id, payload, now
-- -> 1 if added at the tail, 0 (and nothing changes) if an item with that id is in the queue
local item_id = ARGV[1]
if redis.call('HEXISTS', items, item_id) == 1 then return 0 end
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
end
local last = tonumber(redis.call('HGET', holders, 'n') or '0')
local seq = int(math.max(last + 1, tonumber(ARGV[3]) * 1000))  -- see queue.lua
local entry = seq .. '-0'
redis.call('HSET', holders, 'n', seq)
redis.call('XADD', stream, entry, 'i', item_id, 'p', ARGV[2], 't', ARGV[3])
redis.call('HSET', items, item_id, entry)
return 1
