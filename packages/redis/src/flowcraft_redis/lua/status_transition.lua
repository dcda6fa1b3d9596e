local P, run, ttl, to, now, nfrom = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local key = P .. 'status:' .. run
local current = redis.call('HGET', key, 'status')
if not current then return false end
local allowed = false
for j = 7, 6 + nfrom do
  if ARGV[j] == current then allowed = true; break end
end
if not allowed then return false end
for j = 7 + nfrom, #ARGV, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
redis.call('HSET', key, 'status', to, 'updated_at', now)
redis.call('EXPIRE', key, ttl)
redis.call('ZREM', P .. 'idx:status:' .. current, run)
local idx = P .. 'idx:status:' .. to
redis.call('ZADD', idx, now, run)
if to ~= 'running' and to ~= 'awaiting' then
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (tonumber(now) - ttl))
end
return redis.call('HGETALL', key)
