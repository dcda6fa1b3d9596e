-- KEYS: the status hash, then (indexed here: one Redis) idx:created and idx:status:<status>; on a Redis Cluster
-- only the hash (the indexes are in other slots: RedisStatusStore writes them before this script).
-- ARGV: run, ttl, status, created, updated, then field/value pairs
local key, run, ttl, status, created, updated = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, 'status', status, unpack(ARGV, 6))
redis.call('EXPIRE', key, ttl)
if #KEYS > 1 then
  local created_idx = KEYS[2]
  redis.call('ZADD', created_idx, created, run)
  redis.call('ZREMRANGEBYSCORE', created_idx, '-inf', '(' .. (tonumber(updated) - ttl))
  redis.call('ZADD', KEYS[3], updated, run)
end
return 1
