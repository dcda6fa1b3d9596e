-- KEYS: the context hash, the run's coordination hash. ARGV: ttl, n, then n key/value pairs, then the keys to
-- delete. Deletes may empty the context hash, so they clear the run hash's '#ctxttl' (the second a commit last
-- set the context's TTL; see commit.lua): the commit that writes the context again then sets its TTL.
local key, ttl, n = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
for j = 3, 2 + 2 * n, 400 do redis.call('HSET', key, unpack(ARGV, j, math.min(j + 399, 2 + 2 * n))) end
for j = 3 + 2 * n, #ARGV, 400 do redis.call('HDEL', key, unpack(ARGV, j, math.min(j + 399, #ARGV))) end
if #ARGV > 2 + 2 * n then redis.call('HDEL', KEYS[2], '#ctxttl') end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
return 1
