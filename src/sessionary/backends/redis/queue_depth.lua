-- KEYS: see queue.lua
-- ARGV: now
-- -> {waiting, held}: an item whose lease lapsed counts as waiting
local held = redis.call('ZCOUNT', leases, '(' .. ARGV[1], '+inf')
return {redis.call('HLEN', items) - held, held}
