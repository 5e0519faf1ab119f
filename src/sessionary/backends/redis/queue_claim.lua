-- KEYS: see queue.lua
-- ARGV: consumer, now, lease_ms, limit
-- -> {item id, payload, deliveries, enqueued_at, ...}: up to `limit` items, each now held by
--    `consumer` until now + lease_ms; first the lapsed ones (lease_until <= now, soonest
--    lapsed first, taken over with XCLAIM), then new ones in enqueue order (XREADGROUP)
local consumer, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local lease_until = now + tonumber(ARGV[3])
local reply = {}
if redis.call('EXISTS', stream) == 0 then return reply end

local function hand(entry, fields, deliveries)
  local found = {}
  for j = 1, #fields, 2 do found[fields[j]] = fields[j + 1] end
  redis.call('HSET', holders, entry, int(deliveries) .. ' ' .. consumer)
  redis.call('ZADD', leases, lease_until, member(entry))
  reply[#reply + 1] = found.i
  reply[#reply + 1] = found.p
  reply[#reply + 1] = deliveries
  reply[#reply + 1] = found.t
end

local handed = 0
for _, padded in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)) do
  local entry = entry_of(padded)
  local deliveries, previous = string.match(redis.call('HGET', holders, entry), '^(%d+) (.*)$')
  local claimed = redis.call('XCLAIM', stream, 'workers', consumer, 0, entry)
  hand(entry, claimed[1][2], tonumber(deliveries) + 1)
  if previous ~= consumer then forget_if_idle(previous) end
  handed = handed + 1
end
if handed < limit then
  local read = redis.call(
    'XREADGROUP', 'GROUP', 'workers', consumer, 'COUNT', limit - handed, 'STREAMS', stream, '>')
  if read then
    for _, raw in ipairs(read[1][2]) do hand(raw[1], raw[2], 1) end
  end
end
return reply
