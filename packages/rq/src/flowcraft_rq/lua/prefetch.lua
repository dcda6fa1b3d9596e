-- On a Redis Cluster (RqQueue.receive, after the dequeue script): KEYS: the run's status hash, its coordination
-- hash (one slot, the run's). ARGV: job key, owner, now, lease expiry, ttl. Returns {record, lease, state,
-- completion} as the dequeue script's items carry them on one Redis.
local rec = redis.call('HGETALL', KEYS[1])
local lease, state, completion = prefetch_lease(rec, KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
return {rec, lease, state, completion}
