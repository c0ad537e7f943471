-- Hourly budget as a sliding window. KEYS: 1 zset; ARGV: 1 max, 2 window (s), 3 member
-- Returns {1, used} when taken, {0, used} when the budget is spent.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local used = redis.call('ZCARD', KEYS[1])
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 60)
return {1, used + 1}
