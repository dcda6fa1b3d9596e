local P, run, ttl, to, now, nfrom = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local key = P .. 'status:{' .. run .. '}'
local current = redis.call('HGET', key, 'status')
if not current then return false end
local allowed = false
for j = 7, 6 + nfrom do
  if ARGV[j] == current then allowed = true; break end
end
if not allowed then return false end
redis.call('HSET', key, 'status', to, 'updated_at', now, unpack(ARGV, 7 + nfrom))
redis.call('EXPIRE', key, ttl)
redis.call('ZREM', P .. 'idx:status:' .. current, run)
local idx = P .. 'idx:status:' .. to
redis.call('ZADD', idx, now, run)
if to ~= 'running' and to ~= 'awaiting' then
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (tonumber(now) - ttl))
end
-- wakes the clients waiting on this run (RedisStatusStore.wait_for_change)
redis.call('PUBLISH', P .. 'changed:{' .. run .. '}', to)
return redis.call('HGETALL', key)
