local P, now, ttl, run, key, owner, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local R = run_key(P, run)
local got = redis.call('HMGET', R, 'j' .. key, 'l' .. key, 'c' .. key)
if not take_lease(R, key, got[2], owner, now, expiry) then return {0, got[1], false} end
redis.call('EXPIRE', R, ttl)
return {1, got[1], got[3]}
