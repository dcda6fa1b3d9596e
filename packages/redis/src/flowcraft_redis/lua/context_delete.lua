-- KEYS: the context hash, the run's coordination hash. The context is gone, so the run hash's '#ctxttl' goes too:
-- a commit that writes the context again sets its TTL (see commit.lua).
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], '#ctxttl')
return 1
