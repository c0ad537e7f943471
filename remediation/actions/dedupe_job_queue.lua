-- Remove later duplicates from a job list, keeping the first occurrence and the order.
-- KEYS: 1 list; ARGV: 1 scan limit, 2 max removals, 3 id field ('' = whole payload),
--       4 tombstone (random per call, so it cannot equal a real job),
--       5 '1' to only count what would be removed (a plan: writes nothing)
-- Returns {removed, scanned}. Atomic: producers and consumers see before or after.
local dry = ARGV[5] == '1'
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local seen, removed, cap = {}, 0, tonumber(ARGV[2])
for i, item in ipairs(items) do
  local id = item
  if ARGV[3] ~= '' then
    id = nil
    local ok, obj = pcall(cjson.decode, item)
    if ok and type(obj) == 'table' and obj[ARGV[3]] ~= nil and obj[ARGV[3]] ~= cjson.null then
      id = type(obj[ARGV[3]]) .. ':' .. tostring(obj[ARGV[3]])
    end
  end
  if id ~= nil then  -- a job without an id is never called a duplicate
    if seen[id] then
      if removed < cap then
        if not dry then redis.call('LSET', KEYS[1], i - 1, ARGV[4]) end
        removed = removed + 1
      end
    else
      seen[id] = true
    end
  end
end
if removed > 0 and not dry then
  redis.call('LREM', KEYS[1], 0, ARGV[4])
end
return {removed, #items}
