-- Shared by the work-queue scripts (after common.lua). One queue is four keys under one hash
-- tag, passed to every script as KEYS, in this order:
--   KEYS[1] stream: an entry "<seq>-0" per item, fields i item id, p payload, t enqueued_at;
--           its consumer group `workers` has every held item pending (XREADGROUP, XCLAIM)
--   KEYS[2] leases: sorted set of held items (padded seq, see `member`) by lease_until, the
--           store's clock (never the server's idle times)
--   KEYS[3] holders: hash "<seq>-0" -> "<deliveries> <consumer>" per held item, and `n`, the
--           last seq given
--   KEYS[4] items: hash item id -> "<seq>-0", every item in the queue (waiting or held)
-- The keys live while the queue holds items and go with its last one: an emptied queue leaves
-- nothing behind. A waiter's position is the last seq when it began, so seqs must not fall
-- back when the queue starts again: the next is at least now * 1000 (store clock; a queue
-- takes far fewer than 1000 items a ms), past every seq of an earlier ms. Left: a queue that
-- empties and starts again within the ms of a waiter's position, or under a clock running
-- behind another process's, gives seqs the waiter does not see; it waits to its timeout,
-- which costs time, never an item (a worker claims again at least every lease).
local stream, leases, holders, items = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- the leases member of entry "<seq>-0": its seq zero-padded, so items lapsed at the same
-- ms sort (and are claimed) in enqueue order
local function member(entry)
  return string.format('%016d', tonumber(string.match(entry, '^(%d+)')))
end

-- the entry id of a leases member
local function entry_of(padded)
  return int(tonumber(padded)) .. '-0'
end

-- the entry of `item_id` if `consumer` holds it (its lease lapsed or not), else nil
local function held_by(item_id, consumer)
  local entry = redis.call('HGET', items, item_id)
  if not entry then return nil end
  local held = redis.call('HGET', holders, entry)
  if not held or string.match(held, '^%d+ (.*)$') ~= consumer then return nil end
  return entry
end

-- drop `consumer` from the group once it holds nothing: workers come and go (a name per
-- process), and a queue that never empties would otherwise keep every name it ever saw
local function forget_if_idle(consumer)
  if #redis.call('XPENDING', stream, 'workers', '-', '+', 1, consumer) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', stream, 'workers', consumer)
  end
end
