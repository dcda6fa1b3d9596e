-- rq's job hash <R>:job:<id> for a Flowcraft job (the fields rq reads, see flowcraft_rq.queue; the fields every job
-- hash has (RQ_FIELDS, with the static ones) and the data's head and tail are put in by flowcraft_rq.scripts):
-- queued, or with `due` scheduled in the registry `skey`, or with `started` ({worker name, deadline, registry
-- entry, started registry}) already started by that worker, as a dequeue leaves it (a job a commit hands to its
-- worker). `data` is the job JSON. Returns whether the job is ready; the caller pushes the ready ids to the queue
-- list in one RPUSH. The one place that writes our rq job hashes: ENQUEUE, the commit's dispatch, RELEASE and
-- DEQUEUE (the last two for jobs handed over in the lean layout, which had no job hash). Each case is one HSET of
-- its arguments (no table made).
local function write_rq_job(hkey, id, data, now_iso, origin, run, key, due, skey, ttl, started)
  data = RQ_DATA_HEAD .. data .. RQ_DATA_TAIL
  local description = 'flowcraft ' .. run .. ' ' .. key
  local ready = false
  if started then
    redis.call('HSET', hkey, --[[RQ_FIELDS]], 'status', 'started', 'enqueued_at', now_iso,
      'started_at', now_iso, 'worker_name', started[1], 'last_heartbeat', now_iso, 'flowcraft_deliveries', 1)
    redis.call('ZADD', started[4], started[2], started[3])
  elseif due then
    redis.call('HSET', hkey, --[[RQ_FIELDS]], 'status', 'scheduled')
    redis.call('ZADD', skey, due, id)
  else
    redis.call('HSET', hkey, --[[RQ_FIELDS]], 'status', 'queued', 'enqueued_at', now_iso)
    ready = true
  end
  redis.call('EXPIRE', hkey, ttl)
  return ready
end
