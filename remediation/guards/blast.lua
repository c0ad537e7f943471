-- include: blast_lib
-- Reserve up to ARGV[3] units of an action's blast radius across all workers, atomically,
-- as grant ARGV[4]; or, with ARGV[3] negative, give that many back from grant ARGV[4] of
-- ARGV[5] units.
-- KEYS: 1 blast zset (its running sum lives at KEYS[1] .. ':sum').
-- ARGV: 1 cap, 2 window (s), 3 units (negative = refund), 4 grant id, 5 granted (refunds)
-- Returns {granted (or given back), used after}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
if want < 0 then
  local back = blast_refund(KEYS[1], ARGV[4], tonumber(ARGV[5]), -want)
  return {back, blast_used(KEYS[1], now, window)}
end
local used = blast_used(KEYS[1], now, window)
local grant = math.max(0, math.min(want, tonumber(ARGV[1]) - used))
if grant > 0 then
  blast_add(KEYS[1], now, window, ARGV[4], grant)
end
return {grant, used + grant}
