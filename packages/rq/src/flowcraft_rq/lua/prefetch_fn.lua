-- What RqQueue.receive prefetches for one job (Delivery.record/begin) in the dequeue script (dequeue.lua). `rec` is the run's status hash (HGETALL, flat); for an active run the job's lease in the run hash
-- `R` is taken for `owner` as RedisCoordinationStore.begin does (take_lease). Returns lease (1 taken, 0 another
-- owner's live lease, -1 the run is not active: nothing taken), the job's state and (taken) its completion. `got`:
-- the job's state, lease and completion fields as the caller read them (nil: read here).
local function prefetch_lease(rec, R, key, owner, now, expiry, ttl, got)
  if not run_active(rec) then return -1, false, false end
  got = got or redis.call('HMGET', R, 'j' .. key, 'l' .. key, 'c' .. key)
  if take_lease(R, key, got[2], owner, now, expiry) then
    if not got[1] then redis.call('EXPIRE', R, ttl) end  -- R may have been created just now
    return 1, got[1], got[3]
  end
  return 0, got[1], false
end

