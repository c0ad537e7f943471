-- Move jobs older than a bound from a job list to a dead-letter list, with a reason.
-- KEYS: 1 job list, 2 dead-letter list
-- ARGV: 1 scan limit, 2 max moves, 3 enqueued-at field, 4 max age (s), 5 tombstone, 6 reason,
--       7 '1' to only count what would be moved (a plan: writes nothing)
-- Returns {moved, scanned}. Jobs without a numeric timestamp are never moved.
local dry = ARGV[7] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local moved, cap, max_age = 0, tonumber(ARGV[2]), tonumber(ARGV[4])
for i, item in ipairs(items) do
  if moved >= cap then break end
  local ok, obj = pcall(cjson.decode, item)
  if ok and type(obj) == 'table' and type(obj[ARGV[3]]) == 'number' then
    local age = now - obj[ARGV[3]]
    if age > max_age then
      if not dry then
        redis.call('LSET', KEYS[1], i - 1, ARGV[5])
        redis.call('RPUSH', KEYS[2], cjson.encode({
          job = item, reason = ARGV[6], age_seconds = math.floor(age),
          moved_at = now, source = KEYS[1]}))
      end
      moved = moved + 1
    end
  end
end
if moved > 0 and not dry then
  redis.call('LREM', KEYS[1], 0, ARGV[5])
end
return {moved, #items}
