-- include: breaker_lib
-- KEYS: 1 state hash, 2 calls zset, 3 failures zset, 4 permits zset
-- ARGV: 1 outcome ("success"|"failure"), 2 call id, 3 window (s), 4 minimum calls,
--       5 failure-rate threshold (0..1], 6 wait in open state (s), 7 half-open permits
local state, transition = breaker_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  ARGV[1] == 'failure', ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7]), now_s())
return {state, transition}
