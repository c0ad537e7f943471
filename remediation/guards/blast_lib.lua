-- Blast-radius accounting: a sorted set of grants, member "<id>:<units>", score = time.
local function blast_used(key, now, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local used = 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    used = used + tonumber(string.match(member, ':(%-?%d+)$') or '0')
  end
  return used
end
