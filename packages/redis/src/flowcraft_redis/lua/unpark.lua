-- KEYS: the run hash. ARGV: key, job JSON, now, ttl
local R, key, doc, now, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local state = redis.call('HGET', R, 'j' .. key)
if not state or string.sub(state, 1, 1) ~= 'k' then return 0 end
redis.call('HSET', R, 'j' .. key, 'p' .. doc, '#activity', now)
redis.call('HINCRBY', R, '#parked', -1)
redis.call('HINCRBY', R, '#pending', 1)
redis.call('EXPIRE', R, ttl)
return 1
