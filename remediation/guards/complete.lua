-- include: breaker_lib
-- include: blast_lib
-- Record an admitted call's outcome in one atomic call: breaker window, cooldown on
-- success, idempotency key (done on success, freed on failure), lock released.
-- Unused blast-radius units of the admission's grant are given back.
-- KEYS: 1 breaker hash, 2 calls, 3 failures, 4 permits, 5 cooldown, 6 idempotency, 7 lock,
--       8 blast zset
-- ARGV: 1 outcome ("success"|"failure"), 2 call id, 3 window, 4 minimum calls,
--       5 threshold, 6 wait, 7 half-open permits, 8 breaker ('1'/'0'), 9 cooldown (s),
--       10 idempotency ttl (s), 11 lock token ('' = none), 12 units granted at admission,
--       13 units of it to give back
local failed = ARGV[1] == 'failure'
local transition = ''
if ARGV[8] == '1' then
  local _
  _, transition = breaker_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], failed, ARGV[2],
    tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
    tonumber(ARGV[7]), now_s())
end
if not failed and tonumber(ARGV[9]) > 0 then
  redis.call('SET', KEYS[5], '1', 'EX', tonumber(ARGV[9]))
end
if failed then
  redis.call('DEL', KEYS[6])  -- a failed attempt may be retried; the breaker bounds it
else
  redis.call('SET', KEYS[6], 'done', 'EX', tonumber(ARGV[10]))
end
if ARGV[11] ~= '' and redis.call('GET', KEYS[7]) == ARGV[11] then
  redis.call('DEL', KEYS[7])
end
if tonumber(ARGV[13]) > 0 then
  blast_refund(KEYS[8], ARGV[2], tonumber(ARGV[12]), tonumber(ARGV[13]))
end
return transition
