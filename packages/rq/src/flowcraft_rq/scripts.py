"""Lua for the rq queue's hot path. Keys follow rq's layout (``<R>:queue:<name>``, ``<R>:job:<id>``,
``<R>:wip:<name>`` entries ``<job id>:<execution id>`` scored by deadline, ``<R>:scheduled:<name>``,
``<R>:failed:<name>``, ``<R>:queues``), so ``rq info`` and rq's registries see our jobs."""

from __future__ import annotations

# ARGV: R, name, now, now_iso, deadline, max, exec prefix, worker name, P, prefetch ('1'/'0'), owner, lease
# expiry, ttl. Returns {next_due, {id, entry, data, deliveries, record, lease, state, completion}...}.
# With prefetch (``RqQueue.receive``): ``record`` is the flat ``P status:<run>`` hash (empty: no such run) and,
# for an active run, the job's lease is taken for ``owner`` as ``RedisCoordinationStore.begin`` does:
# ``lease`` 1 (taken; ``state`` and ``completion`` read) or 0 (another owner's live lease; ``state`` read).
# Otherwise ``record`` is false and ``lease`` -1.
DEQUEUE = r"""
local R, name, now, now_iso, deadline = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local max, exec, worker = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local P, prefetch, owner, expiry, ttl = ARGV[9], ARGV[10] == '1', ARGV[11], ARGV[12], tonumber(ARGV[13])
local q, wip, sched, jp = R .. ':queue:' .. name, R .. ':wip:' .. name, R .. ':scheduled:' .. name, R .. ':job:'

-- due scheduled jobs to the queue (what rq's scheduler does)
local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', sched, id)
  if redis.call('EXISTS', jp .. id) == 1 then
    redis.call('HSET', jp .. id, 'status', 'queued', 'enqueued_at', now_iso)
    redis.call('RPUSH', q, id)
  end
end
-- deliveries whose visibility deadline passed (their worker died) go back to the front
local expired = redis.call('ZRANGEBYSCORE', wip, '-inf', now, 'LIMIT', 0, 1000)
for _, entry in ipairs(expired) do
  redis.call('ZREM', wip, entry)
  local id = string.sub(entry, 1, (string.find(entry, ':', 1, true) or (#entry + 1)) - 1)
  if redis.call('HGET', jp .. id, 'status') == 'started' then
    redis.call('HSET', jp .. id, 'status', 'queued', 'enqueued_at', now_iso)
    redis.call('LPUSH', q, id)
  end
end

local out = {}
local ids = redis.call('LPOP', q, max)
if ids then
  local records = {}
  for n, id in ipairs(ids) do
    local hk = jp .. id
    local fields = redis.call('HMGET', hk, 'data', 'flowcraft_run', 'flowcraft_key')
    if fields[1] then
      local deliveries = redis.call('HINCRBY', hk, 'flowcraft_deliveries', 1)
      local entry = id .. ':' .. exec .. n
      redis.call('ZADD', wip, deadline, entry)
      redis.call('HSET', hk, 'status', 'started', 'started_at', now_iso, 'worker_name', worker,
        'last_heartbeat', now_iso)
      local item = {id, entry, fields[1], deliveries, false, -1, false, false}
      local run, key = fields[2], fields[3]
      if prefetch and run and key then
        local rec = records[run]
        if rec == nil then
          rec = redis.call('HGETALL', P .. 'status:' .. run)
          records[run] = rec
        end
        item[5] = rec
        local active = false
        for j = 1, #rec, 2 do
          if rec[j] == 'status' then active = rec[j + 1] == 'running' or rec[j + 1] == 'awaiting' end
        end
        if active then
          local lease = P .. 'lease:' .. run
          item[7] = redis.call('HGET', P .. 'jobs:' .. run, key) or false
          local cur = redis.call('HGET', lease, key)
          local free = true
          if cur then
            local sp = string.find(cur, ' ', 1, true)
            if string.sub(cur, sp + 1) ~= owner and tonumber(string.sub(cur, 1, sp - 1)) > now then free = false end
          end
          if free then
            redis.call('HSET', lease, key, expiry .. ' ' .. owner)
            redis.call('EXPIRE', lease, ttl)
            local meta = P .. 'meta:' .. run
            redis.call('HSET', meta, 'activity', ARGV[3])
            redis.call('EXPIRE', meta, ttl)
            item[6] = 1
            item[8] = redis.call('HGET', P .. 'done:' .. run, key) or false
          else
            item[6] = 0
          end
        end
      end
      out[#out + 1] = item
    end
  end
end
local next_due = ''
local first = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
if first[2] then next_due = first[2] end
first = redis.call('ZRANGE', wip, 0, 0, 'WITHSCORES')
if first[2] and (next_due == '' or tonumber(first[2]) < tonumber(next_due)) then next_due = first[2] end
return {next_due, out}
"""

# a lease ``receive`` took that the engine may never have used (it released or dead-lettered the delivery
# before using ``Delivery.begin``): ARGV tail P, run, key, owner (or nothing); only that owner's is dropped
_DROP_LEASE = r"""
local function drop_lease(at)
  if ARGV[at] == nil or ARGV[at] == '' then return end
  local lease = ARGV[at] .. 'lease:' .. ARGV[at + 1]
  local cur = redis.call('HGET', lease, ARGV[at + 2])
  if cur and string.sub(cur, string.find(cur, ' ', 1, true) + 1) == ARGV[at + 3] then
    redis.call('HDEL', lease, ARGV[at + 2])
  end
end
"""

# ARGV: R, name, id, entry
ACK = r"""
local R, name, id, entry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('ZREM', R .. ':wip:' .. name, entry)
redis.call('DEL', R .. ':job:' .. id)
return 1
"""

# ARGV: P, run, key, owner
DROP_LEASE = _DROP_LEASE + r"""
drop_lease(1)
return 1
"""

# ARGV: R, name, id, entry, due ('' = now), now_iso, [P, run, key, owner]
RELEASE = _DROP_LEASE + r"""
local R, name, id, entry, due, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
drop_lease(7)
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
"""

# ARGV: R, name, entry, deadline, id, now_iso
EXTEND = r"""
local R, name, entry, deadline, id, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('ZADD', R .. ':wip:' .. name, 'XX', 'CH', deadline, entry) == 1 then
  redis.call('HSET', R .. ':job:' .. id, 'last_heartbeat', now_iso)
end
return 1
"""

# ARGV: R, name, now_iso, due ('' = now), ttl, nstatic, static pairs..., then per job: id, run, key, data
ENQUEUE = r"""
local R, name, now_iso, due, ttl, nstatic = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local static = {}
for j = 7, 6 + 2 * nstatic do static[#static + 1] = ARGV[j] end
local q, jp = R .. ':queue:' .. name, R .. ':job:'
local ready = {}
for j = 7 + 2 * nstatic, #ARGV, 4 do
  local id, run, key = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local hk = jp .. id
  if #static > 0 then redis.call('HSET', hk, unpack(static)) end
  redis.call('HSET', hk, 'data', ARGV[j + 3], 'created_at', now_iso, 'origin', name,
    'description', 'flowcraft ' .. run .. ' ' .. key, 'flowcraft_run', run, 'flowcraft_key', key)
  if due ~= '' then
    redis.call('HSET', hk, 'status', 'scheduled')
    redis.call('ZADD', R .. ':scheduled:' .. name, due, id)
  else
    redis.call('HSET', hk, 'status', 'queued', 'enqueued_at', now_iso)
    ready[#ready + 1] = id
  end
  redis.call('EXPIRE', hk, ttl)
end
if #ready > 0 then redis.call('RPUSH', q, unpack(ready)) end
redis.call('SADD', R .. ':queues', q)
return #ready
"""
