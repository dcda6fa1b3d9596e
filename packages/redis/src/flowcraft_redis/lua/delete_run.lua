local P, run = ARGV[1], ARGV[2]
local arrs = P .. 'arrs:' .. run
for _, key in ipairs(redis.call('SMEMBERS', arrs)) do redis.call('DEL', key) end
return redis.call('DEL', arrs, P .. 'jobs:' .. run, P .. 'done:' .. run, P .. 'lease:' .. run, P .. 'meta:' .. run)
