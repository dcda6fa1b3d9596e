-- KEYS: the context hash. ARGV: ttl, n, then n key/value pairs, then the keys to delete
local key, ttl, n = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
for j = 3, 2 + 2 * n, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
for j = 3 + 2 * n, #ARGV do redis.call('HDEL', key, ARGV[j]) end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
return 1
