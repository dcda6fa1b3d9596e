-- rq's job hash <R>:job:<id> for a Flowcraft job (the fields rq reads, see flowcraft_rq.queue): queued, or with
-- `due` scheduled in the registry `skey`. Returns whether the job is ready; the caller pushes the ready ids to
-- the queue list in one RPUSH. The one place that writes our rq job hashes: ENQUEUE and the commit dispatch.
local function write_rq_job(hkey, id, static, data, now_iso, origin, run, key, due, skey, ttl)
  local fields = {'data', data, 'created_at', now_iso, 'origin', origin, 'description', 'flowcraft ' .. run .. ' ' .. key,
    'flowcraft_run', run, 'flowcraft_key', key}
  for _, v in ipairs(static) do fields[#fields + 1] = v end
  local ready = not due
  fields[#fields + 1] = 'status'
  if ready then
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
