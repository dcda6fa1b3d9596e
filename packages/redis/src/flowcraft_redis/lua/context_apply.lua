-- KEYS: the context hash. ARGV: ttl, n, then n key/value pairs, then the keys to delete
local key, ttl, n = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
for j = 3, 2 + 2 * n, 400 do redis.call('HSET', key, unpack(ARGV, j, math.min(j + 399, 2 + 2 * n))) end
for j = 3 + 2 * n, #ARGV, 400 do redis.call('HDEL', key, unpack(ARGV, j, math.min(j + 399, #ARGV))) end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
return 1
