-- rq's job hash <R>:job:<id> for a Flowcraft job (the fields rq reads, see flowcraft_rq.queue): queued, or with
-- `due` scheduled in the registry `skey`. Returns whether the job is ready; the caller pushes the ready ids to
-- the queue list in one RPUSH. The one place that writes our rq job hashes: ENQUEUE and the commit dispatch.
local function write_rq_job(hkey, id, static, data, now_iso, origin, run, key, due, skey, ttl)
  if #static > 0 then redis.call('HSET', hkey, unpack(static)) end
  redis.call('HSET', hkey, 'data', data, 'created_at', now_iso, 'origin', origin,
    'description', 'flowcraft ' .. run .. ' ' .. key, 'flowcraft_run', run, 'flowcraft_key', key)
  local ready = true
  if due then
    redis.call('HSET', hkey, 'status', 'scheduled')
    redis.call('ZADD', skey, due, id)
    ready = false
  else
    redis.call('HSET', hkey, 'status', 'queued', 'enqueued_at', now_iso)
  end
  redis.call('EXPIRE', hkey, ttl)
  return ready
end

