local P, run, key, doc, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local jobs, meta = P .. 'jobs:' .. run, P .. 'meta:' .. run
local state = redis.call('HGET', jobs, key)
if not state or string.sub(state, 1, 1) ~= 'k' then return 0 end
redis.call('HSET', jobs, key, 'p' .. doc)
redis.call('HINCRBY', meta, 'parked', -1)
redis.call('HINCRBY', meta, 'pending', 1)
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', meta, ttl)
return 1
