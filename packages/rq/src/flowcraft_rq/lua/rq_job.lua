-- rq's job hash <R>:job:<id> for a Flowcraft job (the fields rq reads, see flowcraft_rq.queue; the static fields
-- (--[[RQ_STATIC]], spliced in) and the data's head and tail are constants put in by flowcraft_rq.scripts): queued, or with `due` scheduled in the
-- registry `skey`, or with `started` ({worker name, deadline, registry entry, started registry}) already started
-- by that worker, as a dequeue leaves it (a job a commit hands to its worker). `data` is the job JSON.
-- Returns whether the job is ready; the caller pushes the ready ids to the queue list in one RPUSH. The one place
-- that writes our rq job hashes: ENQUEUE, the commit's dispatch, RELEASE and DEQUEUE (the last two for jobs
-- handed over in the lean layout, which had no job hash).
local function write_rq_job(hkey, id, data, now_iso, origin, run, key, due, skey, ttl, started)
  local fields = {'data', RQ_DATA_HEAD .. data .. RQ_DATA_TAIL, 'created_at', now_iso, 'origin', origin,
    'description', 'flowcraft ' .. run .. ' ' .. key, 'flowcraft_run', run, 'flowcraft_key', key, --[[RQ_STATIC]]}
  local ready = not due and not started
  fields[#fields + 1] = 'status'
  if started then
    for _, v in ipairs({'started', 'enqueued_at', now_iso, 'started_at', now_iso, 'worker_name', started[1],
        'last_heartbeat', now_iso, 'flowcraft_deliveries', 1}) do fields[#fields + 1] = v end
    redis.call('ZADD', started[4], started[2], started[3])
  elseif ready then
    fields[#fields + 1] = 'queued'
    fields[#fields + 1] = 'enqueued_at'
    fields[#fields + 1] = now_iso
  else
    fields[#fields + 1] = 'scheduled'
    redis.call('ZADD', skey, due, id)
  end
  redis.call('HSET', hkey, unpack(fields))
  redis.call('EXPIRE', hkey, ttl)
  return ready
end
