local P, run, now, ttl, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local jobs, meta = P .. 'jobs:' .. run, P .. 'meta:' .. run
local inserted = {}
for j = 1, n do
  if redis.call('HSETNX', jobs, ARGV[4 + 2 * j], 'p' .. ARGV[5 + 2 * j]) == 1 then
    inserted[#inserted + 1] = j
  end
end
if #inserted > 0 then redis.call('HINCRBY', meta, 'pending', #inserted) end
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', meta, ttl)
return inserted
