-- include: blast_lib
-- Reserve up to ARGV[3] units of an action's blast radius (or give back unused ones with a
-- negative count) across all workers, atomically.
-- KEYS: 1 blast zset. ARGV: 1 cap, 2 window (s), 3 units wanted (negative = refund), 4 id
-- Returns {granted, used after}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local used = blast_used(KEYS[1], now, tonumber(ARGV[2]))
local want = tonumber(ARGV[3])
local grant = want
if want > 0 then
  grant = math.max(0, math.min(want, tonumber(ARGV[1]) - used))
end
if grant ~= 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. grant)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 60)
end
return {grant, used + grant}
