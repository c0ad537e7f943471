-- Record the outcome of a call the breaker allowed, and transition atomically.
-- KEYS: 1 state hash, 2 calls zset, 3 failures zset, 4 permits zset
-- ARGV: 1 outcome ("success"|"failure"), 2 call id, 3 window (s), 4 minimum calls,
--       5 failure-rate threshold (0..1], 6 wait in open state (s), 7 half-open permits
-- Returns {state_after, transition}: transition is "opened", "closed" or "".
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local failed = ARGV[1] == 'failure'
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'

local function open()
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now,
             'open_until', now + tonumber(ARGV[6]))
  redis.call('HINCRBY', KEYS[1], 'times_opened', 1)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  return {'open', 'opened'}
end

if state == 'open' then
  return {'open', ''}  -- a call admitted before the breaker opened: already counted out
end
if state == 'half_open' then
  redis.call('ZREM', KEYS[4], ARGV[2])
  if failed then
    return open()
  end
  local ok = redis.call('HINCRBY', KEYS[1], 'trial_successes', 1)
  if ok >= tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'closed_at', now)
    redis.call('HDEL', KEYS[1], 'trial_successes', 'open_until')
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
    return {'closed', 'closed'}
  end
  return {'half_open', ''}
end
-- closed: failure rate over a sliding time window, once there are enough calls
local window = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[2])
if failed then
  redis.call('ZADD', KEYS[3], now, ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
redis.call('EXPIRE', KEYS[2], math.ceil(window) + 60)
redis.call('EXPIRE', KEYS[3], math.ceil(window) + 60)
redis.call('HSETNX', KEYS[1], 'state', 'closed')
local calls = redis.call('ZCARD', KEYS[2])
local failures = redis.call('ZCARD', KEYS[3])
if calls >= tonumber(ARGV[4]) and failures / calls >= tonumber(ARGV[5]) then
  return open()
end
return {'closed', ''}
