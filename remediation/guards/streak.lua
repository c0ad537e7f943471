-- Hysteresis: how many consecutive runs of one check on one target saw each condition.
-- Conditions not seen in this run start again from zero.
-- KEYS: 1 streak hash. ARGV: 1 ttl (s), 2.. fingerprints seen now. Returns their counts.
local old = redis.call('HGETALL', KEYS[1])
local prev = {}
for i = 1, #old, 2 do
  prev[old[i]] = tonumber(old[i + 1])
end
redis.call('DEL', KEYS[1])
local out = {}
for i = 2, #ARGV do
  local n = (prev[ARGV[i]] or 0) + 1
  redis.call('HSET', KEYS[1], ARGV[i], n)
  out[#out + 1] = n
end
if #ARGV > 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return out
