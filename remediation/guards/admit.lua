-- include: breaker_lib
-- Every guard in one atomic call: all reads first, then (when admitted) all writes, so a
-- refusal leaves nothing behind and two workers can never both pass.
-- KEYS: 1 pause, 2 idempotency, 3 lock, 4 cooldown, 5 budget zset, 6 breaker hash,
--       7 breaker permits, 8 breaker index
-- ARGV: 1 claim ttl (s), 2 lock token ('' = no lock guard), 3 lock ttl (s),
--       4 hourly budget ('' = none), 5 budget member, 6 breaker name ('' = no breaker),
--       7 half-open permits, 8 permit lease (s), 9 permit id, 10 dry-run ('1'/'0')
-- Returns {decision, guard, reason, breaker state}
local now = now_s()
local paused = redis.call('GET', KEYS[1])
if paused then
  return {'suppressed', 'pause', paused, ''}
end
local seen = redis.call('GET', KEYS[2])
if seen then
  return {'duplicate', 'idempotency', seen, ''}
end
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'suppressed', 'lock', '', ''}
end
local cooling = redis.call('TTL', KEYS[4])
if cooling > 0 then
  return {'suppressed', 'cooldown', tostring(cooling), ''}
end
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 3600)
  local used = redis.call('ZCARD', KEYS[5])
  if used >= tonumber(ARGV[4]) then
    return {'suppressed', 'budget', used .. '/' .. ARGV[4], ''}
  end
end
local dry = ARGV[10] == '1'
local bstate = ''
if ARGV[6] ~= '' then
  redis.call('SADD', KEYS[8], ARGV[6])
  local decision, state = breaker_acquire(KEYS[6], KEYS[7], tonumber(ARGV[7]),
                                          tonumber(ARGV[8]), ARGV[9], now, dry)
  bstate = state
  if decision == 'deny' then
    return {'suppressed', 'breaker', state, state}
  end
end
if dry then
  return {'dry_run', 'dry_run', '', bstate}
end
redis.call('SET', KEYS[2], 'claimed', 'EX', tonumber(ARGV[1]))
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[5], now, ARGV[5])
  redis.call('EXPIRE', KEYS[5], 3660)
end
return {'admitted', '', '', bstate}
