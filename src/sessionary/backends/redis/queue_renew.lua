-- KEYS: see queue.lua
-- ARGV: item id, consumer, lease_until
-- -> 1 if `consumer` holds the item (lapsed or not), now until lease_until; else 0
local entry = held_by(ARGV[1], ARGV[2])
if not entry then return 0 end
redis.call('ZADD', leases, ARGV[3], member(entry))
return 1
