-- release.lua: a transaction ended without being recorded (abort, refusal, failure); give
-- back its reservations, quota and hourly rate alike.
--
-- KEYS[1]  the account's held zset     ({prefix}:{a<id>}:held)
-- KEYS[2]  the connection's rate zset  ({prefix}:{a<id>}:rate:<c>)
-- ARGV[1..] the transaction's members ("<txn>|<recipient>")
--
-- Returns the number of held members removed.
if #ARGV == 0 then
  return 0
end
local removed = redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
return removed
