local P, run, now, ttl, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local R = P .. 'run:{' .. run .. '}'
local inserted = {}
for j = 1, n do
  if redis.call('HSETNX', R, 'j' .. ARGV[4 + 2 * j], 'p' .. ARGV[5 + 2 * j]) == 1 then
    inserted[#inserted + 1] = j
  end
end
if #inserted > 0 then redis.call('HINCRBY', R, '#pending', #inserted) end
redis.call('HSET', R, '#activity', now)
redis.call('EXPIRE', R, ttl)
return inserted
