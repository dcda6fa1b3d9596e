-- KEYS: the queue list, its started registry (wip), its scheduled registry, its claims set, this worker's claim
-- list, the lean in-flight set, the lean held-jobs hash. ARGV: job key prefix, now, now_iso, deadline, max, exec prefix, worker name, P,
-- prefetch ('1'/'0'), owner, lease expiry, ttl, claimed ('1': the caller's BLMOVE moved an id into it), claim
-- deadline, the queue's name (rq's origin), the queue group's hash tag ('' on one Redis; on a Redis Cluster the
-- queue is one of its groups, and the runs whose keys carry that tag are the runs of its jobs: flowcraft_redis's
-- Keys, run_keyed).
-- Job hashes (job key prefix .. id) and the claim lists of other workers are named by the ids and lists read
-- here, so they cannot be in KEYS; on a Redis Cluster the queue's hash tag is in every one of them (one slot).
-- Returns {next_due, {id, entry, data, deliveries, record, lease, state, completion[, 1]}..., left} (the 1: a lean
-- entry, whose data is the job's JSON rather than rq's call tuple; record 1: the record of an earlier item of the same
-- run; left: the ids still ready in the queue and, claimed, the claim list). max 0: only the recoveries (a Redis
-- Cluster's receive shares its max out over the queue groups).
-- With prefetch (RqQueue.receive): record is the flat status hash of the job's run (empty: no such run) and,
-- for an active run, the job's lease is taken for owner as RedisCoordinationStore.begin does (take_lease):
-- lease 1 (taken; state and completion read) or 0 (another owner's live lease; state read).
-- Otherwise record is false and lease -1.
-- A worker with nothing to do blocks by moving the next pushed id from the queue into its own claim list
-- (BLMOVE), so one push wakes one worker; before it blocks, this script registers the list in R:claims:<name>
-- until the claim deadline, and the lists of workers that died between their BLMOVE and their next dequeue
-- go back to the front of the queue.
local q, wip, sched, claims, claim = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local jp, now, now_iso, deadline = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local max, exec, worker = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local P, prefetch, owner, expiry, ttl = ARGV[8], ARGV[9] == '1', ARGV[10], ARGV[11], ARGV[12]
local claimed, claim_until = ARGV[13] == '1', ARGV[14]
local inflight, held = KEYS[6], KEYS[7]
local T = ARGV[16]

-- The first score of a sorted set (false: empty). The scheduled and started registries are read this way first:
-- one whose first entry is not due is not scanned, and a dequeue that finds nothing takes its next_due from what
-- was read (nil: read again, the scan changed the set).
local function first_score(key)
  return redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')[2] or false
end
-- due scheduled jobs to the queue (what rq's scheduler does)
local sched_first = first_score(sched)
if sched_first and tonumber(sched_first) <= now then
  sched_first = nil
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', '0', '1000')) do
    redis.call('ZREM', sched, id)
    if redis.call('EXISTS', jp .. id) == 1 then
      redis.call('HSET', jp .. id, 'status', 'queued', 'enqueued_at', now_iso)
      redis.call('RPUSH', q, id)
    end
  end
end
-- deliveries whose visibility deadline passed (their worker died) go back to the front
local wip_first = first_score(wip)
if wip_first and tonumber(wip_first) <= now then
  wip_first = nil
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', wip, '-inf', now, 'LIMIT', '0', '1000')) do
    redis.call('ZREM', wip, entry)
    local id = string.sub(entry, 1, (string.find(entry, ':', 1, true) or (#entry + 1)) - 1)
    if redis.call('HGET', jp .. id, 'status') == 'started' then
      redis.call('HSET', jp .. id, 'status', 'queued', 'enqueued_at', now_iso)
      redis.call('LPUSH', q, id)
    end
  end
end
-- lean deliveries whose deadline passed (their worker died) become rq jobs (delivered once already) at the front of
-- the queue: their job is the run's pending job, or the job their run's last commit marked done and kept in the
-- held-jobs hash (the engine acks it after the run's end); entries are '<id>:<#run>:<run><job key>'
for _, member in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', '0', '1000')) do
  redis.call('ZREM', inflight, member)
  local c1 = string.find(member, ':', 1, true)
  local c2 = string.find(member, ':', c1 + 1, true)
  local id, n = string.sub(member, 1, c1 - 1), tonumber(string.sub(member, c1 + 1, c2 - 1))
  local run, key = string.sub(member, c2 + 1, c2 + n), string.sub(member, c2 + n + 1)
  local doc = redis.call('HGET', held, member)
  if doc then
    redis.call('HDEL', held, member)
  else
    local state = redis.call('HGET', run_key(P, run, T), 'j' .. key)
    if state and string.sub(state, 1, 1) == 'p' then doc = string.sub(state, 2) end
  end
  if doc then
    write_rq_job(jp .. id, id, doc, now_iso, ARGV[15], run, key, nil, sched)
    redis.call('HSET', jp .. id, 'flowcraft_deliveries', '1')
    redis.call('LPUSH', q, id)
  end
end

for _, list in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', now, 'LIMIT', '0', '100')) do
  while redis.call('LMOVE', list, q, 'RIGHT', 'LEFT') do end
  redis.call('ZREM', claims, list)
end

local out = {}
local ids = {}
if claimed and max > 0 then ids = redis.call('LPOP', claim, ARGV[5]) or {} end
if #ids < max then
  for _, id in ipairs(redis.call('LPOP', q, string.format('%d', max - #ids)) or {}) do ids[#ids + 1] = id end
end
if #ids > 0 then
  local records = {}
  for n, id in ipairs(ids) do
    local item, run, key, R, got = nil, nil, nil, nil, nil
    local c1 = string.find(id, ':', 1, true)
    if c1 then
      -- a lean entry '<id>:<#run>:<run><job key>': the job is the run's pending job (none: nothing to deliver); it
      -- goes to the lean in-flight set under the same entry, delivered for the first time (with prefetch, its
      -- lease and completion are read with its state, for prefetch_lease)
      local c2 = string.find(id, ':', c1 + 1, true)
      local len = tonumber(string.sub(id, c1 + 1, c2 - 1))
      run, key = string.sub(id, c2 + 1, c2 + len), string.sub(id, c2 + len + 1)
      R = run_key(P, run, T)
      local state
      if prefetch then
        got = redis.call('HMGET', R, 'j' .. key, 'l' .. key, 'c' .. key)
        state = got[1]
      else
        state = redis.call('HGET', R, 'j' .. key)
      end
      if state and string.sub(state, 1, 1) == 'p' then
        redis.call('ZADD', inflight, deadline, id)
        item = {string.sub(id, 1, c1 - 1), id, string.sub(state, 2), 1, false, -1, false, false, 1}
      end
    else
      local hk = jp .. id
      local fields = redis.call('HMGET', hk, 'data', 'flowcraft_run', 'flowcraft_key', 'flowcraft_deliveries')
      if fields[1] then
        local deliveries = (tonumber(fields[4]) or 0) + 1
        local entry = id .. ':' .. exec .. n
        redis.call('ZADD', wip, deadline, entry)
        redis.call('HSET', hk, 'status', 'started', 'started_at', now_iso, 'worker_name', worker,
          'last_heartbeat', now_iso, 'flowcraft_deliveries', string.format('%d', deliveries))
        item = {id, entry, fields[1], deliveries, false, -1, false, false}
        run, key = fields[2], fields[3]
      end
    end
    if item then
      if prefetch and run and key then
        local rec = records[run]
        if rec == nil then
          rec = redis.call('HGETALL', run_keyed(P, 'status', run, T))
          records[run] = rec
          item[5] = rec
        else
          item[5] = 1  -- the record of this reply's earlier item of the same run, not sent twice
        end
        item[6], item[7], item[8] = prefetch_lease(rec, R or run_key(P, run, T), key, owner, ARGV[2], expiry, ttl, got)
      end
      out[#out + 1] = item
    end
  end
end
-- when nothing was ready: the caller blocks on its claim list until the next time something falls due
local next_due = ''
if #out == 0 then
  redis.call('ZADD', claims, claim_until, claim)
  if sched_first == nil then sched_first = first_score(sched) end
  if wip_first == nil then wip_first = first_score(wip) end
  if sched_first then next_due = sched_first end
  if wip_first and (next_due == '' or tonumber(wip_first) < tonumber(next_due)) then next_due = wip_first end
end
local left = redis.call('LLEN', q)
if claimed then left = left + redis.call('LLEN', claim) end
return {next_due, out, left}
