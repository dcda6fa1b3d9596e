-- CoordinationStore.dispatches: the commit script of flowcraft_redis calls dispatch(fired, run, now, at, k, handed)
-- with its fired jobs ({index, job JSON, due ('' or seconds), job key, spliced} each), where RqDispatcher.args
-- begin in ARGV and RqDispatcher.keys (the queue list, its scheduled registry, its started registry) in KEYS,
-- and the positions in fired of the jobs handed to the committing worker (continues): due jobs go to the queue
-- list, later ones to its scheduled registry, handed ones straight into the started registry with the visibility
-- deadline, started by this worker as its dequeue would leave them; returns {id, registry entry} per handed
-- position. (The queue is in rq's set of queues since the run's first job was enqueued.)
local function dispatch(fired, run, now, at, k, handed)
  local qkey, skey, wip = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local jprefix, origin, worker = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local jttl, head, tail, nstatic = tonumber(ARGV[at + 3]), ARGV[at + 4], ARGV[at + 5], tonumber(ARGV[at + 6])
  local static = {}
  for j = at + 7, at + 6 + 2 * nstatic do static[#static + 1] = ARGV[j] end
  local now_iso, deadline = ARGV[at + 7 + 2 * nstatic], ARGV[at + 8 + 2 * nstatic]
  local ids_at = at + 9 + 2 * nstatic
  local ready, replies = {}, {}
  for f, entry in ipairs(fired) do
    local id = ARGV[ids_at + f - 1]
    local due = tonumber(entry[3])
    if not (due and due > now) then due = nil end
    local started = nil
    if handed[f] then
      started = {worker, deadline, id .. ':c', wip}
      replies[f] = {id, started[3]}
    end
    if write_rq_job(jprefix .. id, id, static, head .. entry[2] .. tail, now_iso, origin, run, entry[4], due, skey,
        jttl, started) then
      ready[#ready + 1] = id
    end
  end
  if #ready > 0 then redis.call('RPUSH', qkey, unpack(ready)) end
  return replies
end

-- Capabilities.acks: the commit acks the committed job's delivery (KEYS[k + 3]: its job hash, after
-- RqDispatcher.keys; ARGV[at]: its started-registry entry) as RqQueue.ack does: the entry removed, the job deleted
local function ack_delivery(at, k)
  redis.call('ZREM', KEYS[k + 2], ARGV[at])
  redis.call('DEL', KEYS[k + 3])
end
