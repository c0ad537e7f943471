-- Take or renew a lease: KEYS[1] the lease, ARGV[1] the holder, ARGV[2] its length (ms).
-- 1 when the caller holds it afterwards (renewed, or taken because it was free), else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
