-- One approval changes state: from pending to approved, denied, expired or withdrawn.
-- KEYS[1] the approval's hash, KEYS[2] the pending set. ARGV: new state, by, reason, now,
-- mode ("decide": expired first if due; "expire": only if due; "withdraw": always).
-- Returns {result, state, decided_by}: result "ok" (done), "expired" (it was due: now
-- expired), "missing", "not_due", or "already" (decided before: its state and by whom).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'missing', '', ''}
end
if state ~= 'pending' then
  return {'already', state, redis.call('HGET', KEYS[1], 'decided_by') or ''}
end
local now = tonumber(ARGV[4])
local due = tonumber(redis.call('HGET', KEYS[1], 'expires_at')) <= now
local to, by, reason, result = ARGV[1], ARGV[2], ARGV[3], 'ok'
if ARGV[5] == 'expire' and not due then
  return {'not_due', state, ''}
end
if ARGV[5] == 'decide' and due then
  to, by, reason, result = 'expired', 'expiry', 'not decided in time', 'expired'
end
redis.call('HSET', KEYS[1], 'state', to, 'decided_by', by, 'decided_at', ARGV[4],
  'reason', reason)
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
return {result, to, by}
