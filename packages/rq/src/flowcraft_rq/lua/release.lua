-- KEYS: the started registry (wip), the job hash, the queue list, its scheduled registry, [the run's
-- coordination hash]. ARGV: id, entry, due ('' = now), now_iso, [job key, owner]: the lease receive took, which
-- the engine may never have used (it gave the delivery back before Delivery.begin); only that owner's is
-- dropped (only on one Redis, where receive prefetches)
local wip, hk, q, sched = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, entry, due, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if KEYS[5] then drop_lease(KEYS[5], ARGV[5], ARGV[6]) end
if redis.call('ZREM', wip, entry) == 0 then return 0 end
if redis.call('EXISTS', hk) == 0 then return 0 end
if due ~= '' then
  redis.call('HSET', hk, 'status', 'scheduled')
  redis.call('ZADD', sched, due, id)
else
  redis.call('HSET', hk, 'status', 'queued', 'enqueued_at', now_iso)
  redis.call('RPUSH', q, id)
end
return 1
