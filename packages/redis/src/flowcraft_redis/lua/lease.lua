-- Leases, shared by every script that reads or writes one (flowcraft-redis and flowcraft-rq, prepended by
-- flowcraft_redis.layout.with_leases). They live in the run's coordination hash P .. 'run:{' .. run .. '}'
-- (run_key, tagged with the run's queue group on a cluster; scripts get it in KEYS): field 'l' .. job key = expiry .. ' ' .. owner ('' once dropped), and '#activity' the run's last
-- commit/lease time (what the reconciler reads).

-- The key of kind `kind` of run `run`: P .. kind .. ':{' .. run .. '}', or, given its queue group's tag `T` (a Redis
-- Cluster), P .. kind .. ':{' .. T .. '}' .. run (flowcraft_redis.layout.Keys)
local function run_keyed(P, kind, run, T)
  if T and T ~= '' then return P .. kind .. ':{' .. T .. '}' .. run end
  return P .. kind .. ':{' .. run .. '}'
end

local function run_key(P, run, T)
  return run_keyed(P, 'run', run, T)
end

-- expiry and owner of a lease field's value; nil when there is no lease
local function lease_parts(current)
  if not current or current == '' then return nil, nil end
  local sp = string.find(current, ' ', 1, true)
  return tonumber(string.sub(current, 1, sp - 1)), string.sub(current, sp + 1)
end

-- the owner of a lease field's value, without reading its expiry (nil when there is no lease)
local function lease_holder(current)
  if not current or current == '' then return nil end
  return string.sub(current, string.find(current, ' ', 1, true) + 1)
end

-- Whether a run record (its status hash as HGETALL returns it, flat) is active: only an active run's jobs get a
-- lease from a prefetch or a hand-over
local function run_active(rec)
  for j = 1, #rec, 2 do
    if rec[j] == 'status' then return rec[j + 1] == 'running' or rec[j + 1] == 'awaiting' end
  end
  return false
end

-- Take the lease of job `key` in the run hash `R` for `owner` until `expiry`, unless another owner's lease
-- is live at `now`. `current` is the lease field as the caller read it (false: none). The caller refreshes
-- R's TTL when R may be new.
local function take_lease(R, key, current, owner, now, expiry)
  local expires, holder = lease_parts(current)
  if holder and holder ~= owner and expires > tonumber(now) then return false end
  redis.call('HSET', R, 'l' .. key, expiry .. ' ' .. owner, '#activity', now)
  return true
end

-- Push `owner`'s lease of job `key` in the run hash `R` to `expiry`; false when the lease is not (or no longer)
-- theirs.
local function renew_lease(R, key, owner, now, expiry, ttl)
  if lease_holder(redis.call('HGET', R, 'l' .. key)) ~= owner then return false end
  redis.call('HSET', R, 'l' .. key, expiry .. ' ' .. owner, '#activity', now)
  redis.call('EXPIRE', R, ttl)
  return true
end

-- Drop the lease of job `key` in the run hash `R` if `owner` holds it; whether it did.
local function drop_lease(R, key, owner)
  if lease_holder(redis.call('HGET', R, 'l' .. key)) ~= owner then return false end
  redis.call('HDEL', R, 'l' .. key)
  return true
end

