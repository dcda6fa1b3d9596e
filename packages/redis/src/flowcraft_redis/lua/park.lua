local P, run, key, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local jobs, meta = P .. 'jobs:' .. run, P .. 'meta:' .. run
local state = redis.call('HGET', jobs, key)
if state and string.sub(state, 1, 1) == 'p' then
  redis.call('HSET', jobs, key, 'k' .. string.sub(state, 2))
  redis.call('HINCRBY', meta, 'pending', -1)
  redis.call('HINCRBY', meta, 'parked', 1)
end
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', meta, ttl)
return {tonumber(redis.call('HGET', meta, 'pending') or '0'), tonumber(redis.call('HGET', meta, 'parked') or '0')}
