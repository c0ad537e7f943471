-- include: breaker_lib
-- include: blast_lib
-- Every guard in one atomic call: all reads first, then (when admitted) all writes, so a
-- refusal leaves nothing behind (except a flap suspension) and two workers can never both
-- pass. The idempotency claim is written here, before any side effect, and names the task:
-- the same task delivered again (its worker died mid-action) resumes instead of being
-- refused, anything else with the same key is a duplicate.
-- KEYS: 1 pause, 2 idempotency, 3 lock, 4 cooldown, 5 budget zset, 6 breaker hash,
--       7 breaker permits, 8 breaker index, 9 flap zset, 10 flap suspension, 11 blast zset
-- ARGV: 1 claim ttl (s), 2 lock token ('' = no lock guard), 3 lock ttl (s),
--       4 hourly budget ('' = none), 5 budget member, 6 breaker name ('' = no breaker),
--       7 half-open permits, 8 permit lease (s), 9 permit id, 10 dry-run ('1'/'0'),
--       11 task id, 12 flap max runs ('' = no flap guard), 13 flap window (s),
--       14 flap suspension (s), 15 blast cap ('' = none), 16 blast window (s),
--       17 blast units to reserve now ('' = none; granted as grant ARGV[9])
-- Returns {decision, guard, reason, breaker state, blast units granted}
local now = now_s()
local paused = redis.call('GET', KEYS[1])
if paused then
  return {'suppressed', 'pause', paused, ''}
end
local resume = false
local seen = redis.call('GET', KEYS[2])
if seen then
  local state, owner, since = string.match(seen, '^(%a+)|([^|]*)|(.*)$')
  if state == 'claimed' and owner ~= '' and owner == ARGV[11] then
    resume = since
  else
    return {'duplicate', 'idempotency', state or seen, ''}
  end
end
if ARGV[12] ~= '' and not resume then
  local suspended = redis.call('TTL', KEYS[10])
  if suspended > 0 then
    return {'suppressed', 'flap', 'suspended:' .. suspended, ''}
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now - tonumber(ARGV[13]))
  local runs = redis.call('ZCARD', KEYS[9])
  if runs >= tonumber(ARGV[12]) and ARGV[10] ~= '1' then
    -- the one write a refusal makes: the suspension, so the escalation is sent once
    redis.call('SET', KEYS[10], runs, 'EX', tonumber(ARGV[14]))
    return {'suppressed', 'flap', 'new:' .. runs, ''}
  end
end
if ARGV[2] ~= '' and not resume and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'suppressed', 'lock', '', ''}
end
local cooling = redis.call('TTL', KEYS[4])
if cooling > 0 and not resume then
  return {'suppressed', 'cooldown', tostring(cooling), ''}
end
if ARGV[4] ~= '' and not resume then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 3600)
  local used = redis.call('ZCARD', KEYS[5])
  if used >= tonumber(ARGV[4]) then
    return {'suppressed', 'budget', used .. '/' .. ARGV[4], ''}
  end
end
local blast_free = 0
if ARGV[15] ~= '' and not resume then
  local used = blast_used(KEYS[11], now, tonumber(ARGV[16]))
  if used >= tonumber(ARGV[15]) then
    return {'suppressed', 'blast', used .. '/' .. ARGV[15], ''}
  end
  blast_free = tonumber(ARGV[15]) - used
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
local claimed_at = resume or string.format('%.3f', now)
redis.call('SET', KEYS[2], 'claimed|' .. ARGV[11] .. '|' .. claimed_at, 'EX', tonumber(ARGV[1]))
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
end
if resume then
  return {'admitted', 'resume', claimed_at, bstate, 0}
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[5], now, ARGV[5])
  redis.call('EXPIRE', KEYS[5], 3660)
end
if ARGV[12] ~= '' then
  redis.call('ZADD', KEYS[9], now, ARGV[9])
  redis.call('EXPIRE', KEYS[9], tonumber(ARGV[13]) + 60)
end
local granted = 0
if ARGV[15] ~= '' and ARGV[17] ~= '' then
  granted = math.min(tonumber(ARGV[17]), blast_free)
  if granted > 0 then
    blast_add(KEYS[11], now, tonumber(ARGV[16]), ARGV[9], granted)
  end
end
return {'admitted', '', claimed_at, bstate, granted}
