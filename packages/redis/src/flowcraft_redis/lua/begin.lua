local P, now, ttl, run, key, owner, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local state = redis.call('HGET', P .. 'jobs:' .. run, key)
if not take_lease(P, run, key, owner, now, expiry, ttl) then return {0, state or false, false} end
return {1, state or false, redis.call('HGET', P .. 'done:' .. run, key) or false}
