-- Dispatcher.lua of flowcraft_redis.handover (a queue that is not on this Redis, e.g. RabbitMQ): the commit script
-- calls dispatch(fired, run, now, at, k, handed) with its fired jobs ({index, job JSON, due, job key, spliced}
-- each), where the dispatcher's ARGV begin (the visibility deadline, then a token unique to this commit) and
-- where its one key is in KEYS (the in-flight set). Only the jobs handed to the committing worker are written:
-- each goes into the sorted set as '<token>.<position> <job JSON>', scored by the visibility deadline; the engine
-- publishes the other fired jobs to the queue. Returns that member per handed position.
local function dispatch(fired, run, now, at, k, handed)
  local set, deadline, token = KEYS[k], ARGV[at], ARGV[at + 1]
  local replies = {}
  for f, entry in ipairs(fired) do
    if handed[f] then
      local member = token .. '.' .. f .. ' ' .. entry[2]
      redis.call('ZADD', set, deadline, member)
      replies[f] = member
    end
  end
  return replies
end
