-- credit_balance.lua: add quota units to an account's live balance, if Redis holds one.
--
-- KEYS[1]  the account's balance key ({prefix}:{a<id>}:balance)
-- ARGV[1]  units to add (an integer; negative to take away)
--
-- Returns the new balance, or false (nil) when no balance is cached: the next milter to
-- need it loads it from PostgreSQL, which already includes the change.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
