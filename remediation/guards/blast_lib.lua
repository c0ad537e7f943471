-- Blast-radius accounting: a sorted set of grants (member "<id>:<units>", score = time) and
-- their running sum at "<key>:sum", so a call costs O(expired grants), not O(window).
local function blast_used(key, now, window)
  local sum_key = key .. ':sum'
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now - window)
  if #expired > 0 then
    local gone = 0
    for _, member in ipairs(expired) do
      gone = gone + tonumber(string.match(member, ':(%d+)$') or '0')
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    redis.call('INCRBY', sum_key, -gone)
  end
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', sum_key)
    return 0
  end
  return math.max(0, tonumber(redis.call('GET', sum_key) or '0'))
end

local function blast_add(key, now, window, id, units)
  redis.call('ZADD', key, now, id .. ':' .. units)
  redis.call('INCRBY', key .. ':sum', units)
  redis.call('EXPIRE', key, window + 60)
  redis.call('EXPIRE', key .. ':sum', window + 60)
end

-- Give back `units` of the grant `id` (of `granted` units): the grant shrinks in place and
-- keeps its time, so the window stays exact. A grant already out of the window is gone.
local function blast_refund(key, id, granted, units)
  local member = id .. ':' .. granted
  local score = redis.call('ZSCORE', key, member)
  if not score or units <= 0 then
    return 0
  end
  units = math.min(units, granted)
  redis.call('ZREM', key, member)
  if granted - units > 0 then
    redis.call('ZADD', key, score, id .. ':' .. (granted - units))
  end
  redis.call('INCRBY', key .. ':sum', -units)
  return units
end
