-- KEYS: the run hash. ARGV: now, ttl, n, then n times job key, job JSON
local R, now, ttl, n = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local inserted = {}
for j = 1, n do
  if redis.call('HSETNX', R, 'j' .. ARGV[2 + 2 * j], 'p' .. ARGV[3 + 2 * j]) == 1 then
    inserted[#inserted + 1] = j
  end
end
if #inserted > 0 then redis.call('HINCRBY', R, '#pending', #inserted) end
redis.call('HSET', R, '#activity', now)
redis.call('EXPIRE', R, ttl)
return inserted
