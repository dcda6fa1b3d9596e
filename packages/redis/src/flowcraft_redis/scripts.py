"""The Lua scripts: each store operation is one script, so one round trip and atomic on the server.

Conventions shared by every script (and mirrored by ``flowcraft_redis._client.Keys``):

* ``ARGV[1]`` is the key prefix ``P``; keys are ``P .. kind .. ':' .. run_id``; join arrivals live in
  ``P .. 'arr:' .. #run_id .. ':' .. run_id .. ':' .. target_key`` (byte length first, so unambiguous);
* the jobs hash maps a job key to its state letter followed by the job document: ``p`` pending, ``k`` parked
  (both with the JSON document), ``d`` done, ``s`` skipped;
* a completion is stored as ``token .. ' ' .. json``; a lease as ``expiry .. ' ' .. owner``;
* user values are JSON produced by Python and are never decoded in Lua (cjson would lose precision and turn
  ``[]`` into ``{}``); a join's input map is spliced together from the stored strings.
"""

from __future__ import annotations

COMMIT = r"""
local P, run, jkey, now, ttl, flags = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local recovery = string.sub(flags, 1, 1) == '1'
local finish = string.sub(flags, 2, 2) == '1'
local has_completion = string.sub(flags, 3, 3) == '1'
local apply_ctx = string.sub(flags, 4, 4) == '1'
local token, completion, owner = ARGV[7], ARGV[8], ARGV[9]
local jobs, done, meta = P .. 'jobs:' .. run, P .. 'done:' .. run, P .. 'meta:' .. run
local arrs, lease, ctx = P .. 'arrs:' .. run, P .. 'lease:' .. run, P .. 'ctx:' .. run
local i = 10
local fresh = false  -- context is written only with a new completion record: a replay changes nothing

if has_completion then
  local existing = redis.call('HGET', done, jkey)
  if existing then
    local sp = string.find(existing, ' ', 1, true)
    if string.sub(existing, 1, sp - 1) ~= token then
      return {'conflict', string.sub(existing, sp + 1)}
    end
  else
    redis.call('HSET', done, jkey, token .. ' ' .. completion)
    fresh = true
  end
end
apply_ctx = apply_ctx and fresh
local n = tonumber(ARGV[i]); i = i + 1
if apply_ctx and n > 0 then
  for j = i, i + 2 * n - 1, 2 do redis.call('HSET', ctx, ARGV[j], ARGV[j + 1]) end
end
i = i + 2 * n
n = tonumber(ARGV[i]); i = i + 1
if apply_ctx and n > 0 then
  for j = i, i + n - 1 do redis.call('HDEL', ctx, ARGV[j]) end
end
i = i + n
if apply_ctx then redis.call('EXPIRE', ctx, ttl) end

local prefix_len = string.len(run)
local fired, skipped, touched = {}, {}, false
local count = tonumber(ARGV[i]); i = i + 1
for a = 1, count do
  local target, member, arrived, contrib = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local expected, strategy, doc, due = tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  local decision = nil
  local akey = nil
  if expected <= 1 then
    if arrived == '1' then decision = 'fire' else decision = 'skip' end
  else
    akey = P .. 'arr:' .. prefix_len .. ':' .. run .. ':' .. target
    redis.call('HSETNX', akey, member, arrived .. contrib)
    redis.call('EXPIRE', akey, ttl)
    redis.call('SADD', arrs, akey)
    touched = true
    local values = redis.call('HVALS', akey)
    local any = false
    for _, v in ipairs(values) do
      if string.sub(v, 1, 1) == '1' then any = true; break end
    end
    local complete = #values >= expected
    if strategy == 'any' then
      if any then decision = 'fire' elseif complete then decision = 'skip' end
    elseif complete then
      if any then decision = 'fire' else decision = 'skip' end
    end
  end
  if decision == 'skip' then
    if redis.call('HSETNX', jobs, target, 's') == 1 then
      skipped[#skipped + 1] = target
    elseif recovery and redis.call('HGET', jobs, target) == 's' then
      skipped[#skipped + 1] = target
    end
  elseif decision == 'fire' then
    local body = doc
    local spliced = false
    if akey then
      local pairs_ = redis.call('HGETALL', akey)
      local parts = {}
      for j = 1, #pairs_, 2 do
        local v = pairs_[j + 1]
        if string.sub(v, 1, 1) == '1' then
          parts[#parts + 1] = cjson.encode(pairs_[j]) .. ':' .. string.sub(v, 2)
        end
      end
      body = string.sub(doc, 1, -2) .. ',"input":{' .. table.concat(parts, ',') .. '}}'
      spliced = true
    end
    if redis.call('HSETNX', jobs, target, 'p' .. body) == 1 then
      redis.call('HINCRBY', meta, 'pending', 1)
      local decode = 0
      if spliced then decode = 1 end
      fired[#fired + 1] = {a, body, due, target, decode}
    elseif recovery then
      local state = redis.call('HGET', jobs, target)
      if string.sub(state, 1, 1) == 'p' then
        fired[#fired + 1] = {a, string.sub(state, 2), due, target, 1}
      end
    end
  end
end

-- finishing: the job is done and (Transition.owner) that owner's lease is dropped; afterwards the owner holds
-- no lease on the job either way, so the reply says released (Committed.lease_released)
local released = 0
if finish then
  local state = redis.call('HGET', jobs, jkey)
  if state and string.sub(state, 1, 1) == 'p' then
    redis.call('HSET', jobs, jkey, 'd')
    redis.call('HINCRBY', meta, 'pending', -1)
  end
  if owner ~= '' then
    local cur = redis.call('HGET', lease, jkey)
    if cur and string.sub(cur, string.find(cur, ' ', 1, true) + 1) == owner then redis.call('HDEL', lease, jkey) end
    released = 1
  end
end
redis.call('HSET', meta, 'activity', ARGV[4])
for _, key in ipairs({jobs, done, meta, lease}) do redis.call('EXPIRE', key, ttl) end
if touched then redis.call('EXPIRE', arrs, ttl) end
redis.call('EXPIRE', P .. 'status:' .. run, ttl)

-- dispatch (Committed.dispatched): push fired jobs into a queue on this Redis, due ones to its list and
-- later ones to its scheduled registry (see flowcraft_redis.colocation.Dispatcher)
local ndisp = tonumber(ARGV[i]); i = i + 1
if ndisp > 0 and #fired > 0 then
  local qkey, skey, jprefix, qset, origin = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local jttl, head, tail, nstatic = tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7], tonumber(ARGV[i + 8])
  local static = {}
  for j = i + 9, i + 8 + 2 * nstatic do static[#static + 1] = ARGV[j] end
  local now_iso = ARGV[i + 9 + 2 * nstatic]
  local ids_at = i + 10 + 2 * nstatic
  local ready = {}
  for f, entry in ipairs(fired) do
    local id = ARGV[ids_at + f - 1]
    local hkey = jprefix .. id
    if #static > 0 then redis.call('HSET', hkey, unpack(static)) end
    redis.call('HSET', hkey, 'data', head .. entry[2] .. tail, 'created_at', now_iso, 'origin', origin,
      'description', 'flowcraft ' .. run .. ' ' .. entry[4], 'flowcraft_run', run, 'flowcraft_key', entry[4])
    local due = tonumber(entry[3])
    if due and due > now then
      redis.call('HSET', hkey, 'status', 'scheduled')
      redis.call('ZADD', skey, due, id)
    else
      redis.call('HSET', hkey, 'status', 'queued', 'enqueued_at', now_iso)
      ready[#ready + 1] = id
    end
    redis.call('EXPIRE', hkey, jttl)
  end
  if #ready > 0 then redis.call('RPUSH', qkey, unpack(ready)) end
  redis.call('SADD', qset, qkey)
end

local pending = tonumber(redis.call('HGET', meta, 'pending') or '0')
local parked = tonumber(redis.call('HGET', meta, 'parked') or '0')
local out = {'ok', pending, parked, released, #fired}
for _, entry in ipairs(fired) do
  out[#out + 1] = entry[1]
  if entry[5] == 1 then out[#out + 1] = entry[2] else out[#out + 1] = '' end
end
out[#out + 1] = #skipped
for _, key in ipairs(skipped) do out[#out + 1] = key end
return out
"""

BEGIN = r"""
local P, now, ttl, run, key, owner, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local lease = P .. 'lease:' .. run
local state = redis.call('HGET', P .. 'jobs:' .. run, key)
local cur = redis.call('HGET', lease, key)
if cur then
  local sp = string.find(cur, ' ', 1, true)
  if string.sub(cur, sp + 1) ~= owner and tonumber(string.sub(cur, 1, sp - 1)) > tonumber(now) then
    return {0, state or false, false}
  end
end
redis.call('HSET', lease, key, expiry .. ' ' .. owner)
redis.call('EXPIRE', lease, ttl)
local meta = P .. 'meta:' .. run
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', meta, ttl)
return {1, state or false, redis.call('HGET', P .. 'done:' .. run, key) or false}
"""

RENEW = r"""
local P, run, key, owner, now, expiry, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local lease = P .. 'lease:' .. run
local cur = redis.call('HGET', lease, key)
if not cur then return 0 end
local sp = string.find(cur, ' ', 1, true)
if string.sub(cur, sp + 1) ~= owner then return 0 end
redis.call('HSET', lease, key, expiry .. ' ' .. owner)
redis.call('EXPIRE', lease, ttl)
local meta = P .. 'meta:' .. run
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', meta, ttl)
return 1
"""

RELEASE = r"""
local P, run, key, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lease = P .. 'lease:' .. run
local cur = redis.call('HGET', lease, key)
if not cur then return 0 end
local sp = string.find(cur, ' ', 1, true)
if string.sub(cur, sp + 1) ~= owner then return 0 end
redis.call('HDEL', lease, key)
return 1
"""

SCHEDULE = r"""
local P, run, now, ttl, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local jobs, meta = P .. 'jobs:' .. run, P .. 'meta:' .. run
local inserted = {}
for j = 1, n do
  if redis.call('HSETNX', jobs, ARGV[4 + 2 * j], 'p' .. ARGV[5 + 2 * j]) == 1 then
    inserted[#inserted + 1] = j
  end
end
if #inserted > 0 then redis.call('HINCRBY', meta, 'pending', #inserted) end
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', meta, ttl)
return inserted
"""

PARK = r"""
local P, run, key, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local jobs, meta = P .. 'jobs:' .. run, P .. 'meta:' .. run
local state = redis.call('HGET', jobs, key)
if state and string.sub(state, 1, 1) == 'p' then
  redis.call('HSET', jobs, key, 'k' .. string.sub(state, 2))
  redis.call('HINCRBY', meta, 'pending', -1)
  redis.call('HINCRBY', meta, 'parked', 1)
end
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', meta, ttl)
return {tonumber(redis.call('HGET', meta, 'pending') or '0'), tonumber(redis.call('HGET', meta, 'parked') or '0')}
"""

UNPARK = r"""
local P, run, key, doc, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local jobs, meta = P .. 'jobs:' .. run, P .. 'meta:' .. run
local state = redis.call('HGET', jobs, key)
if not state or string.sub(state, 1, 1) ~= 'k' then return 0 end
redis.call('HSET', jobs, key, 'p' .. doc)
redis.call('HINCRBY', meta, 'parked', -1)
redis.call('HINCRBY', meta, 'pending', 1)
redis.call('HSET', meta, 'activity', now)
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', meta, ttl)
return 1
"""

JOBS = r"""
local P, run = ARGV[1], ARGV[2]
return {redis.call('HGETALL', P .. 'jobs:' .. run), redis.call('HGETALL', P .. 'lease:' .. run)}
"""

DELETE_RUN = r"""
local P, run = ARGV[1], ARGV[2]
local arrs = P .. 'arrs:' .. run
for _, key in ipairs(redis.call('SMEMBERS', arrs)) do redis.call('DEL', key) end
return redis.call('DEL', arrs, P .. 'jobs:' .. run, P .. 'done:' .. run, P .. 'lease:' .. run, P .. 'meta:' .. run)
"""

CONTEXT_APPLY = r"""
local key, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for j = 4, 3 + 2 * n, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
for j = 4 + 2 * n, #ARGV do redis.call('HDEL', key, ARGV[j]) end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
return 1
"""

STATUS_CREATE = r"""
local P, run, ttl, status, created, updated = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local key = P .. 'status:' .. run
if redis.call('EXISTS', key) == 1 then return 0 end
for j = 7, #ARGV, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
redis.call('HSET', key, 'status', status)
redis.call('EXPIRE', key, ttl)
local created_idx = P .. 'idx:created'
redis.call('ZADD', created_idx, created, run)
redis.call('ZREMRANGEBYSCORE', created_idx, '-inf', '(' .. (tonumber(updated) - ttl))
redis.call('ZADD', P .. 'idx:status:' .. status, updated, run)
return 1
"""

STATUS_TRANSITION = r"""
local P, run, ttl, to, now, nfrom = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local key = P .. 'status:' .. run
local current = redis.call('HGET', key, 'status')
if not current then return false end
local allowed = false
for j = 7, 6 + nfrom do
  if ARGV[j] == current then allowed = true; break end
end
if not allowed then return false end
for j = 7 + nfrom, #ARGV, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
redis.call('HSET', key, 'status', to, 'updated_at', now)
redis.call('EXPIRE', key, ttl)
redis.call('ZREM', P .. 'idx:status:' .. current, run)
local idx = P .. 'idx:status:' .. to
redis.call('ZADD', idx, now, run)
if to ~= 'running' and to ~= 'awaiting' then
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (tonumber(now) - ttl))
end
return redis.call('HGETALL', key)
"""
