-- A run record's status transition (StatusStore.transition; the run's end in a commit, commit.lua): the record in
-- the hash `key` moved to status `to` when its status is one of the list `from`, with `updated_at` = `now` (text)
-- and the record's field/value pairs ARGV[fields_at .. fields_upto] (JSON), the hash's TTL set to `ttl` seconds;
-- its entry moved from the index of the status it had (KEYS[idx_at + j - 1] for from[j]) to the new status's
-- (KEYS[idx_at + #from]: on a Redis Cluster its queue group's, in the run's slot), whose entries older than the
-- TTL are trimmed when it is not an active status; the new status published on `channel`, which wakes the
-- clients waiting on the run (RedisStatusStore.wait_for_change). PUBLISH is SPUBLISH on a Redis Cluster (the
-- channel is in the run's slot: the message stays in its shard; flowcraft_redis.scripts). Returns whether it
-- moved the record.
local function change_status(key, idx_at, run, ttl, to, now, channel, from, fields_at, fields_upto)
  local current = redis.call('HGET', key, 'status')
  if not current then return false end
  local allowed = nil
  for j = 1, #from do
    if from[j] == current then allowed = j; break end
  end
  if not allowed then return false end
  redis.call('HSET', key, 'status', to, 'updated_at', now, unpack(ARGV, fields_at, fields_upto))
  redis.call('EXPIRE', key, ttl)
  redis.call('ZREM', KEYS[idx_at + allowed - 1], run)
  local idx = KEYS[idx_at + #from]
  redis.call('ZADD', idx, now, run)
  if to ~= 'running' and to ~= 'awaiting' then
    redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (tonumber(now) - ttl))
  end
  redis.call('PUBLISH', channel, to)
  return true
end
