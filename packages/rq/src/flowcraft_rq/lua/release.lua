-- KEYS: the delivery's set (the started registry, or the lean in-flight set), its job hash, the queue list, its
-- scheduled registry, the lean held-jobs hash, [the run's coordination hash]. ARGV: id, entry, due ('' = now),
-- now_iso, job JSON (only for a lean delivery, which has no job hash yet: it is written here), origin, run, job
-- key, [owner]: the lease receive took, which the engine may never have used (it gave the delivery back before
-- Delivery.begin); only that owner's is dropped
local set, hk, q, sched, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, entry, due, now_iso, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if KEYS[6] then drop_lease(KEYS[6], ARGV[8], ARGV[9]) end
if redis.call('ZREM', set, entry) == 0 then return 0 end
if data ~= '' then
  redis.call('HDEL', held, entry)
  local ready = write_rq_job(hk, id, data, now_iso, ARGV[6], ARGV[7], ARGV[8], due ~= '' and due or nil, sched)
  redis.call('HSET', hk, 'flowcraft_deliveries', '1')
  if ready then redis.call('RPUSH', q, id) end
  return 1
end
if redis.call('EXISTS', hk) == 0 then return 0 end
if due ~= '' then
  redis.call('HSET', hk, 'status', 'scheduled')
  redis.call('ZADD', sched, due, id)
else
  redis.call('HSET', hk, 'status', 'queued', 'enqueued_at', now_iso)
  redis.call('RPUSH', q, id)
end
return 1
