-- Leases, shared by every script that reads or writes one (flowcraft-redis and flowcraft-rq, prepended by
-- flowcraft_redis.layout.with_leases). The hash P .. 'lease:' .. run maps a job key to expiry .. ' ' .. owner;
-- the run's P .. 'meta:' .. run hash holds its last activity time (what the reconciler reads).

local function lease_parts(current)
  local sp = string.find(current, ' ', 1, true)
  return tonumber(string.sub(current, 1, sp - 1)), string.sub(current, sp + 1)
end

local function touch_run(P, run, now, ttl)
  local meta = P .. 'meta:' .. run
  redis.call('HSET', meta, 'activity', now)
  redis.call('EXPIRE', meta, ttl)
end

-- Take the lease of job `key` for `owner` until `expiry`, unless another owner's lease is live at `now`.
local function take_lease(P, run, key, owner, now, expiry, ttl)
  local lease = P .. 'lease:' .. run
  local current = redis.call('HGET', lease, key)
  if current then
    local expires, holder = lease_parts(current)
    if holder ~= owner and expires > tonumber(now) then return false end
  end
  redis.call('HSET', lease, key, expiry .. ' ' .. owner)
  redis.call('EXPIRE', lease, ttl)
  touch_run(P, run, now, ttl)
  return true
end

-- Push `owner`'s lease of job `key` to `expiry`; false when the lease is not (or no longer) theirs.
local function renew_lease(P, run, key, owner, now, expiry, ttl)
  local lease = P .. 'lease:' .. run
  local current = redis.call('HGET', lease, key)
  if not current then return false end
  local _, holder = lease_parts(current)
  if holder ~= owner then return false end
  redis.call('HSET', lease, key, expiry .. ' ' .. owner)
  redis.call('EXPIRE', lease, ttl)
  touch_run(P, run, now, ttl)
  return true
end

-- Drop the lease of job `key` if `owner` holds it; whether it did.
local function drop_lease(P, run, key, owner)
  local lease = P .. 'lease:' .. run
  local current = redis.call('HGET', lease, key)
  if not current then return false end
  local _, holder = lease_parts(current)
  if holder ~= owner then return false end
  redis.call('HDEL', lease, key)
  return true
end

