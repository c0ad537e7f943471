-- Ask for approval of one call, once: KEYS[1] the call's key, KEYS[2] the new approval's
-- hash, KEYS[3] the pending set, KEYS[4] the recent set, KEYS[5] the condition's set.
-- ARGV[1] id, ARGV[2] expires_at, ARGV[3] keep seconds, ARGV[4] requested_at, ARGV[5] kept,
-- ARGV[6] the prefix of an approval's key, ARGV[7..] field, value pairs. An approval asked
-- for the same call that is pending, approved, running, denied or expired answers instead
-- ({id, state}); one that ran or was withdrawn lets a new one be asked ({id, "new"}).
local existing = redis.call('GET', KEYS[1])
if existing then
  local state = redis.call('HGET', ARGV[6] .. existing, 'state')
  if state and state ~= 'done' and state ~= 'withdrawn' then
    return {existing, state}
  end
end
local fields = {}
for i = 7, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[5]) + 1))
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[3])
return {ARGV[1], 'new'}
