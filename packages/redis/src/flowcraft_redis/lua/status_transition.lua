-- KEYS: the status hash, the run's context hash (written only with context pairs: writes_context), then the
-- run's idx:status:<s> of each allowed from-status and of the new status (on a Redis Cluster its queue group's:
-- all in the run's slot).
-- ARGV: run, ttl, to, now, the run's change channel, nfrom, from-statuses..., nctx, the context's ttl, nctx
-- context key/value pairs (JSON, as RedisContext.apply writes them), then the record's field/value pairs
local key, run, ttl, to, now = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local channel, nfrom = ARGV[5], tonumber(ARGV[6])
local current = redis.call('HGET', key, 'status')
if not current then return false end
local allowed = nil
for j = 1, nfrom do
  if ARGV[6 + j] == current then allowed = j; break end
end
if not allowed then return false end
local nctx = tonumber(ARGV[7 + nfrom])
local fields = 9 + nfrom + 2 * nctx
redis.call('HSET', key, 'status', to, 'updated_at', now, unpack(ARGV, fields))
redis.call('EXPIRE', key, ttl)
if nctx > 0 then
  -- the transition won: its context values go in the same step (a run's _result with its final status)
  redis.call('HSET', KEYS[2], unpack(ARGV, 9 + nfrom, fields - 1))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8 + nfrom]))
end
redis.call('ZREM', KEYS[2 + allowed], run)
local idx = KEYS[3 + nfrom]
redis.call('ZADD', idx, now, run)
if to ~= 'running' and to ~= 'awaiting' then
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (tonumber(now) - ttl))
end
-- wakes the clients waiting on this run (RedisStatusStore.wait_for_change); the channel is not a key (on a
-- cluster PUBLISH reaches every node)
redis.call('PUBLISH', channel, to)
return redis.call('HGETALL', key)
