-- reserve.lua: check a connection's hourly rate and its account's quota (and overage cap),
-- and reserve one unit for one recipient of one SMTP transaction, atomically across every
-- relay node.
--
-- KEYS[1]  the account's balance key   ({prefix}:{a<id>}:balance)  string, units left
-- KEYS[2]  the account's held zset     ({prefix}:{a<id>}:held)     member -> expiry time
-- KEYS[3]  the connection's rate zset  ({prefix}:{a<id>}:rate:<c>) member -> reserve time
-- KEYS[4]  the account's overage hash  ({prefix}:{a<id>}:overage)  period -> overage units
-- ARGV[1]  member: "<txn>|<recipient lower-cased>"
-- ARGV[2]  reservation TTL in seconds (an orphaned reservation frees itself after it)
-- ARGV[3]  hourly rate limit of the connection; 0 = unlimited (the rate zset is not touched)
-- ARGV[4]  1 when the account is paid (out of quota = overage), 0 for a demo account
-- ARGV[5]  the account's overage cap: recipients per billing period beyond quota; -1 = none
-- ARGV[6]  the billing period ("YYYY-MM"), the overage hash's field (only read with a cap)
-- ARGV[7]  '0': rate only (a sandbox connection's recipient: its mail is captured, never
--          billed): the hourly rate is checked and counted, no quota unit is held, status
--          1 with remaining 0; anything else (or absent): rate and quota as below
--
-- Returns {status, remaining, retry_after_ms}:
--   status 1 reserved, 2 overage (paid account beyond quota), 3 duplicate (member already
--   held: counted once), 4 rate limited, 5 quota exhausted (demo account), 6 need balance
--   (no balance key, or a capped account beyond quota without the period's overage count:
--   load them from PostgreSQL, SET NX / HSETNX, call again), 7 overage cap reached (the
--   period's committed overage plus the overage units held reach the cap);
--   remaining = units left after this reservation (balance - held; negative = overage);
--   retry_after_ms = when the oldest rate member leaves the hour (status 4 only).
-- Time is Redis's own (TIME), so the relay nodes' clocks do not matter.
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local rate_limit = tonumber(ARGV[3])
local paid = ARGV[4] == '1'
local cap = tonumber(ARGV[5])
local quota = ARGV[7] ~= '0'
local window = 3600

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local available = 0
if quota then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZSCORE', KEYS[2], member) then
    return {3, 0, 0}
  end

  local balance = redis.call('GET', KEYS[1])
  if not balance then
    return {6, 0, 0}
  end
  available = tonumber(balance) - redis.call('ZCARD', KEYS[2])
  if available <= 0 and not paid then
    return {5, available, 0}
  end
  if available <= 0 and cap >= 0 then
    local used = redis.call('HGET', KEYS[4], ARGV[6])
    if not used then
      return {6, 0, 0}
    end
    -- Held units beyond the balance are the overage units in flight.
    if tonumber(used) - available >= cap then
      return {7, available, 0}
    end
  end
elseif redis.call('ZSCORE', KEYS[3], member) then
  return {3, 0, 0}
end

if rate_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  if redis.call('ZCARD', KEYS[3]) >= rate_limit then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local retry_ms = math.ceil((tonumber(oldest[2]) + window - now) * 1000)
    return {4, available, retry_ms}
  end
  redis.call('ZADD', KEYS[3], now, member)
  redis.call('EXPIRE', KEYS[3], window + 60)
end

if not quota then
  return {1, 0, 0}
end
redis.call('ZADD', KEYS[2], now + ttl, member)
redis.call('EXPIRE', KEYS[2], ttl + 60)
if available <= 0 then
  return {2, available - 1, 0}
end
return {1, available - 1, 0}
