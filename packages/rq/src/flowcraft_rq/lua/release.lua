-- ARGV: R, name, id, entry, due ('' = now), now_iso, [P, run, key, owner]: the lease receive took, which the
-- engine may never have used (it gave the delivery back before Delivery.begin); only that owner's is dropped
local R, name, id, entry, due, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if #ARGV > 6 then drop_lease(ARGV[7], ARGV[8], ARGV[9], ARGV[10]) end
if redis.call('ZREM', R .. ':wip:' .. name, entry) == 0 then return 0 end
local hk = R .. ':job:' .. id
if redis.call('EXISTS', hk) == 0 then return 0 end
if due ~= '' then
  redis.call('HSET', hk, 'status', 'scheduled')
  redis.call('ZADD', R .. ':scheduled:' .. name, due, id)
else
  redis.call('HSET', hk, 'status', 'queued', 'enqueued_at', now_iso)
  redis.call('RPUSH', R .. ':queue:' .. name, id)
end
return 1
