-- KEYS: the run hash. ARGV: now, ttl, job key, owner, expiry
local R = KEYS[1]
local now, ttl, key, owner, expiry = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local got = redis.call('HMGET', R, 'j' .. key, 'l' .. key, 'c' .. key)
if not take_lease(R, key, got[2], owner, now, expiry) then return {0, got[1], false} end
redis.call('EXPIRE', R, ttl)
return {1, got[1], got[3]}
