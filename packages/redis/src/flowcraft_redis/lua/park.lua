-- KEYS: the run hash. ARGV: key, now, ttl
local R, key, now, ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local state = redis.call('HGET', R, 'j' .. key)
if state and string.sub(state, 1, 1) == 'p' then
  redis.call('HSET', R, 'j' .. key, 'k' .. string.sub(state, 2))
  redis.call('HINCRBY', R, '#pending', -1)
  redis.call('HINCRBY', R, '#parked', 1)
end
redis.call('HSET', R, '#activity', now)
redis.call('EXPIRE', R, ttl)
local counts = redis.call('HMGET', R, '#pending', '#parked')
return {tonumber(counts[1] or '0'), tonumber(counts[2] or '0')}
