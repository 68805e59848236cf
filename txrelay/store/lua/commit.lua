-- commit.lua: a transaction's recipients are recorded in PostgreSQL; turn their
-- reservations into consumption of the live balance.
--
-- KEYS[1]  the account's balance key ({prefix}:{a<id>}:balance)
-- KEYS[2]  the account's held zset   ({prefix}:{a<id>}:held)
-- ARGV[1]  units consumed: recipients the ledger billed to quota (overage ones are not taken
--          from the balance, which mirrors PostgreSQL's remaining quota and never goes below 0)
-- ARGV[2..] the transaction's held members ("<txn>|<recipient>")
--
-- Returns the number of held members removed (fewer than given when some had expired).
-- The balance is decremented only when it exists: a missing balance is loaded later from
-- PostgreSQL, which already counts these recipients. Rate members stay: they count for
-- the sliding hour.
local removed = 0
if #ARGV > 1 then
  removed = redis.call('ZREM', KEYS[2], unpack(ARGV, 2))
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DECRBY', KEYS[1], ARGV[1])
end
return removed
