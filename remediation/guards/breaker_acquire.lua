-- Circuit breaker admission, atomically (resilience4j semantics).
-- KEYS: 1 state hash, 2 half-open permits zset, 3 index set
-- ARGV: 1 name, 2 max half-open permits, 3 permit lease (s), 4 permit id
-- Returns {decision, state, detail}: decision is "allow" or "deny".
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('SADD', KEYS[3], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  return {'allow', 'closed', ''}
end
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
  if now < open_until then
    return {'deny', 'open', tostring(open_until - now)}
  end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_successes', 0)
  redis.call('DEL', KEYS[2])
  state = 'half_open'
end
-- half_open: a bounded number of trials, each holding a lease that expires
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return {'deny', 'half_open', 'no trial permit left'}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return {'allow', 'half_open', ARGV[4]}
