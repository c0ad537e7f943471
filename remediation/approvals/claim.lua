-- The approved call's task claims the approval, once: KEYS[1] the approval's hash,
-- ARGV[1] the task id. {"ok"} for the first task (and the same task delivered again),
-- {"taken", task} when another task has it, {"state", state} when it is not approved.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'state', 'missing'}
end
local task = redis.call('HGET', KEYS[1], 'run_task')
if state == 'approved' and not task then
  redis.call('HSET', KEYS[1], 'state', 'running', 'run_task', ARGV[1])
  return {'ok', ''}
end
if state == 'running' and task == ARGV[1] then
  return {'ok', ''}
end
if task then
  return {'taken', task}
end
return {'state', state}
