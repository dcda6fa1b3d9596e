local P, run = ARGV[1], ARGV[2]
return {redis.call('HGETALL', P .. 'jobs:' .. run), redis.call('HGETALL', P .. 'lease:' .. run)}
