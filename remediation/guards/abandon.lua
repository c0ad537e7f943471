-- include: blast_lib
-- Give back what an admission took, without recording an outcome (the audit write failed).
-- KEYS: 1 idempotency, 2 lock, 3 budget zset, 4 breaker permits, 5 flap zset, 6 blast zset
-- ARGV: 1 lock token ('' = none), 2 budget member ('' = none), 3 permit id (= grant id),
--       4 blast units granted at admission
local claim = redis.call('GET', KEYS[1])
if claim and string.sub(claim, 1, 7) == 'claimed' then
  redis.call('DEL', KEYS[1])
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[3])
if tonumber(ARGV[4]) > 0 then
  blast_refund(KEYS[6], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[4]))
end
return 1
