-- include: breaker_lib
-- KEYS: 1 state hash, 2 half-open permits zset, 3 index set
-- ARGV: 1 name, 2 max half-open permits, 3 permit lease (s), 4 permit id
redis.call('SADD', KEYS[3], ARGV[1])
local decision, state, detail = breaker_acquire(KEYS[1], KEYS[2], tonumber(ARGV[2]),
                                                tonumber(ARGV[3]), ARGV[4], now_s(), false)
return {decision, state, detail}
