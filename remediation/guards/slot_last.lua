-- The last slot fired of one beat entry: returns the one before (or false) and moves it
-- forward to ARGV[1] only (a message delivered late never moves it back).
-- KEYS[1] rem:slot:last:<entry>; ARGV[1] slot (epoch seconds), ARGV[2] ttl seconds
local prev = redis.call('GET', KEYS[1])
if (not prev) or tonumber(prev) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
end
return prev
