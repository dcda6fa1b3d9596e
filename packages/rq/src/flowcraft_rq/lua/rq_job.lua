-- rq's job hash <R>:job:<id> for a Flowcraft job (the fields rq reads, see flowcraft_rq.queue; the fields every job
-- hash has (RQ_FIELDS, with the static ones) and the data's head and tail are put in by flowcraft_rq.scripts):
-- queued, or with `due` scheduled in the registry `skey`, or with `worker` (its name) already started by that
-- worker, as a dequeue leaves it (a job a commit hands to its worker), its `entry` put in the started registry
-- `wip` with the visibility `deadline` (separate arguments: a table per job would be made and collected). `data` is
-- the job JSON. Returns whether the job is ready; the caller pushes the ready ids to the queue list in one RPUSH.
-- Every field rq shows for a job of that status (a field costs the hash's HSET and DEL ~1.7k instructions, but rq's
-- tools should see our jobs as rq would). No TTL, as rq gives none to a queued job: the hash lives until its
-- delivery is acked (DEL) or dead-lettered (which sets rq's failure TTL); an EXPIRE was ~0.7 us per job. Numbers
-- passed to redis.call are strings (a Lua number is formatted with '%.14g', a float sprintf per call). The one
-- place that writes our rq job hashes: ENQUEUE, the commit's dispatch, RELEASE and DEQUEUE (the last two for jobs
-- handed over in the lean layout, which had no job hash). Each case is one HSET of its arguments (no table made).
local function write_rq_job(hkey, id, data, now_iso, origin, run, key, due, skey, worker, deadline, entry, wip)
  data = RQ_DATA_HEAD .. data .. RQ_DATA_TAIL
  local description = 'flowcraft ' .. run .. ' ' .. key
  local ready = false
  if worker then
    redis.call('HSET', hkey, --[[RQ_FIELDS]], 'status', 'started', 'enqueued_at', now_iso,
      'started_at', now_iso, 'worker_name', worker, 'last_heartbeat', now_iso, 'flowcraft_deliveries', '1')
    redis.call('ZADD', wip, deadline, entry)
  elseif due then
    redis.call('HSET', hkey, --[[RQ_FIELDS]], 'status', 'scheduled')
    redis.call('ZADD', skey, due, id)
  else
    redis.call('HSET', hkey, --[[RQ_FIELDS]], 'status', 'queued', 'enqueued_at', now_iso)
    ready = true
  end
  return ready
end
