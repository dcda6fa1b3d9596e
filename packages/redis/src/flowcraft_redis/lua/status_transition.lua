-- KEYS: the status hash, then (indexed here: one Redis) idx:status:<s> of each allowed from-status and of the
-- new status; on a Redis Cluster only the hash (RedisStatusStore writes the new status's index entry before
-- this script, and list/stalled drop the entries a record has left).
-- ARGV: run, ttl, to, now, the run's change channel, nfrom, from-statuses..., then field/value pairs
local key, run, ttl, to, now = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local channel, nfrom = ARGV[5], tonumber(ARGV[6])
local current = redis.call('HGET', key, 'status')
if not current then return false end
local allowed = nil
for j = 1, nfrom do
  if ARGV[6 + j] == current then allowed = j; break end
end
if not allowed then return false end
redis.call('HSET', key, 'status', to, 'updated_at', now, unpack(ARGV, 7 + nfrom))
redis.call('EXPIRE', key, ttl)
if #KEYS > 1 then
  redis.call('ZREM', KEYS[1 + allowed], run)
  local idx = KEYS[2 + nfrom]
  redis.call('ZADD', idx, now, run)
  if to ~= 'running' and to ~= 'awaiting' then
    redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (tonumber(now) - ttl))
  end
end
-- wakes the clients waiting on this run (RedisStatusStore.wait_for_change); the channel is not a key (on a
-- cluster PUBLISH reaches every node)
redis.call('PUBLISH', channel, to)
return redis.call('HGETALL', key)
