-- KEYS: see queue.lua
-- ARGV: item id, consumer
-- -> 1 if `consumer` held the item, now gone from the queue; else 0 and nothing changes
local entry = held_by(ARGV[1], ARGV[2])
if not entry then return 0 end
redis.call('XACK', stream, 'workers', entry)
redis.call('XDEL', stream, entry)
redis.call('HDEL', holders, entry)
redis.call('ZREM', leases, member(entry))
redis.call('HDEL', items, ARGV[1])
if redis.call('EXISTS', items) == 0 then  -- the last item: the queue leaves nothing behind
  redis.call('DEL', stream, holders)
else
  forget_if_idle(ARGV[2])
end
return 1
