-- commit.lua: a transaction's recipients are recorded in PostgreSQL (or in the milter's
-- local journal while PostgreSQL is down); turn their reservations into consumption of the
-- live balance.
--
-- KEYS[1]  the account's balance key ({prefix}:{a<id>}:balance)
-- ARGV[1]  units consumed: recipients the ledger billed to quota (overage ones are not taken
--          from the balance, which mirrors PostgreSQL's remaining quota and never goes below 0).
--          For a journaled message every recipient is given: the balance goes down to 0 at
--          most, exactly what the replay will bill to quota.
-- KEYS[2]  the account's held zset   ({prefix}:{a<id>}:held)
-- KEYS[3]  the account's overage hash ({prefix}:{a<id>}:overage)
-- ARGV[2]  the billing period ("YYYY-MM"): the units that did not fit in the balance are
--          added to that field of the overage hash, when the field exists (a missing one is
--          loaded from PostgreSQL, which already counts them). Without a balance the field
--          is dropped too: both are reloaded from PostgreSQL together.
-- ARGV[3..] the transaction's held members ("<txn>|<recipient>")
--
-- Returns the number of held members removed (fewer than given when some had expired).
-- The balance is decremented only when it exists: a missing balance is loaded later from
-- PostgreSQL, which already counts these recipients. Rate members stay: they count for
-- the sliding hour.
local removed = 0
if #ARGV > 2 then
  removed = redis.call('ZREM', KEYS[2], unpack(ARGV, 3))
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local left = redis.call('DECRBY', KEYS[1], ARGV[1])
  if left < 0 then
    redis.call('SET', KEYS[1], 0)
    if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
      redis.call('HINCRBY', KEYS[3], ARGV[2], -left)
    end
  end
else
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return removed
