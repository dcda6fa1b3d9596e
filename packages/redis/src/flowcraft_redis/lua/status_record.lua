-- A run record created unless one exists (StatusStore.create, and the first step of a run's start, start.lua).
-- KEYS[k], KEYS[k + 1], KEYS[k + 2]: the status hash, the run's idx:created and idx:status:<status> (on a Redis
-- Cluster its queue group's, in the run's slot). ARGV from `at`: run, ttl (whole seconds), status, created, updated,
-- then the record's field/value pairs up to ARGV[upto]. Returns whether it created the record.
local function create_record(k, at, upto)
  local key, run = KEYS[k], ARGV[at]
  if redis.call('EXISTS', key) == 1 then return false end
  local updated = ARGV[at + 4]
  redis.call('HSET', key, 'status', ARGV[at + 2], unpack(ARGV, at + 5, upto))
  redis.call('EXPIRE', key, ARGV[at + 1])
  local created_idx = KEYS[k + 1]
  redis.call('ZADD', created_idx, ARGV[at + 3], run)
  redis.call('ZREMRANGEBYSCORE', created_idx, '-inf', '(' .. (tonumber(updated) - tonumber(ARGV[at + 1])))
  redis.call('ZADD', KEYS[k + 2], updated, run)
  return true
end
