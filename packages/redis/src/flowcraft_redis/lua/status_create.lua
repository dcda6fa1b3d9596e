-- KEYS: the status hash, the run's idx:created and idx:status:<status> (on a Redis Cluster its queue group's, in
-- the run's slot).
-- ARGV: run, ttl, status, created, updated, then field/value pairs
local key, run, ttl, status, created, updated = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, 'status', status, unpack(ARGV, 6))
redis.call('EXPIRE', key, ttl)
local created_idx = KEYS[2]
redis.call('ZADD', created_idx, created, run)
redis.call('ZREMRANGEBYSCORE', created_idx, '-inf', '(' .. (tonumber(updated) - ttl))
redis.call('ZADD', KEYS[3], updated, run)
return 1
