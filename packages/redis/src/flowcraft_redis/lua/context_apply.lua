local key, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for j = 4, 3 + 2 * n, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
for j = 4 + 2 * n, #ARGV do redis.call('HDEL', key, ARGV[j]) end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
return 1
