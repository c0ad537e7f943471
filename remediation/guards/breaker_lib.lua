-- Circuit breaker state machine (resilience4j semantics), shared by the scripts that
-- include it (`-- include: breaker_lib` on their first line). Time is the server's.
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- Ask for a call. In HALF_OPEN this takes one of the bounded, leased trial permits.
-- With dry = true nothing is written. Returns decision ("allow"|"deny"), state, detail.
local function breaker_acquire(h, permits, max_permits, lease, pid, now, dry)
  local state = redis.call('HGET', h, 'state') or 'closed'
  if state == 'closed' then
    return 'allow', 'closed', ''
  end
  if state == 'open' then
    local open_until = tonumber(redis.call('HGET', h, 'open_until') or '0')
    if now < open_until then
      return 'deny', 'open', tostring(open_until - now)
    end
    if not dry then
      redis.call('HSET', h, 'state', 'half_open', 'trial_successes', 0)
      redis.call('DEL', permits)
    end
    state = 'half_open'
  end
  if not dry then
    redis.call('ZREMRANGEBYSCORE', permits, '-inf', now)
  end
  if redis.call('ZCOUNT', permits, now, '+inf') >= max_permits then
    return 'deny', 'half_open', 'no trial permit left'
  end
  if not dry then
    redis.call('ZADD', permits, now + lease, pid)
  end
  return 'allow', 'half_open', pid
end

-- Record the outcome of an allowed call and transition. Returns state, transition
-- ("opened", "closed" or "").
local function breaker_record(h, calls, fails, permits, failed, call_id, window, min_calls,
                              threshold, wait, max_permits, now)
  local state = redis.call('HGET', h, 'state') or 'closed'
  local function open()
    redis.call('HSET', h, 'state', 'open', 'opened_at', now, 'open_until', now + wait)
    redis.call('HINCRBY', h, 'times_opened', 1)
    redis.call('DEL', calls, fails, permits)
    return 'open', 'opened'
  end
  if state == 'open' then
    return 'open', ''  -- admitted before the breaker opened: already counted out
  end
  if state == 'half_open' then
    redis.call('ZREM', permits, call_id)
    if failed then
      return open()
    end
    if redis.call('HINCRBY', h, 'trial_successes', 1) >= max_permits then
      redis.call('HSET', h, 'state', 'closed', 'closed_at', now)
      redis.call('HDEL', h, 'trial_successes', 'open_until')
      redis.call('DEL', calls, fails, permits)
      return 'closed', 'closed'
    end
    return 'half_open', ''
  end
  redis.call('ZADD', calls, now, call_id)
  if failed then
    redis.call('ZADD', fails, now, call_id)
  end
  redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', fails, '-inf', now - window)
  redis.call('EXPIRE', calls, math.ceil(window) + 60)
  redis.call('EXPIRE', fails, math.ceil(window) + 60)
  redis.call('HSETNX', h, 'state', 'closed')
  local n = redis.call('ZCARD', calls)
  if n >= min_calls and redis.call('ZCARD', fails) / n >= threshold then
    return open()
  end
  return 'closed', ''
end
