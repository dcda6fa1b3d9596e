local P, run, ttl, status, created, updated = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local key = P .. 'status:{' .. run .. '}'
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, 'status', status, unpack(ARGV, 7))
redis.call('EXPIRE', key, ttl)
local created_idx = P .. 'idx:created'
redis.call('ZADD', created_idx, created, run)
redis.call('ZREMRANGEBYSCORE', created_idx, '-inf', '(' .. (tonumber(updated) - ttl))
redis.call('ZADD', P .. 'idx:status:' .. status, updated, run)
return 1
