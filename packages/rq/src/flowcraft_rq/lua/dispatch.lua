-- CoordinationStore.dispatches: the commit script of flowcraft_redis calls dispatch(fired, run, now, at, k, handed)
-- with its fired jobs ({index, job JSON, due ('' or seconds), job key, spliced} each), where RqDispatcher.args (the
-- queue's name, the worker's name, now in rq's format, the visibility deadline, then the new job ids) begin in ARGV
-- (rq's job key prefix and the layout are constants of the text: flowcraft_rq.scripts.dispatch) and
-- RqDispatcher.keys (the queue list, its scheduled registry, its started registry, the lean in-flight set, the lean
-- held-jobs hash) in KEYS, and the positions in fired of the jobs handed to the committing worker (continues): due
-- jobs go to the queue list, later ones to its scheduled registry, handed ones straight into the started registry
-- with the visibility deadline, started by this worker as its dequeue would leave them. In the lean layout a job
-- due now gets no rq job hash: it is an entry '<id>:<#run>:<run><job key>' naming the run's pending job (its JSON
-- is there), pushed to the queue list or, handed over, put in the lean in-flight set (a dequeue re-queues it as an
-- rq job if the entry lapses). Returns {id, entry} per handed position. (The queue is in rq's set of queues since
-- the run's first job was enqueued.)
local function dispatch(fired, run, now, at, k, handed)
  local qkey, skey, wip, inflight = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local jprefix, lean = --[[DISPATCH_CONSTANTS]]
  local origin, worker, now_iso, deadline = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local ids_at = at + 4
  local ready, replies = {}, {}
  for f, entry in ipairs(fired) do
    local id = ARGV[ids_at + f - 1]
    local due = tonumber(entry[3])
    if not (due and due > now) then due = nil end
    if lean and not due then
      local member = id .. ':' .. string.format('%d', #run) .. ':' .. run .. entry[4]  -- %d: not as a float
      if handed[f] then
        redis.call('ZADD', inflight, deadline, member)
        replies[f] = {id, member}
      else
        ready[#ready + 1] = member
      end
    else
      if handed[f] then
        local started = id .. ':c' .. id  -- > 64 bytes: flowcraft_rq.queue.execution_prefix
        replies[f] = {id, started}
        write_rq_job(jprefix .. id, id, entry[2], now_iso, origin, run, entry[4], due, skey, worker, deadline,
          started, wip)
      elseif write_rq_job(jprefix .. id, id, entry[2], now_iso, origin, run, entry[4], due, skey) then
        ready[#ready + 1] = id
      end
    end
  end
  for j = 1, #ready, 1000 do  -- unpack fails past ~8000 values (Lua's C stack)
    redis.call('RPUSH', qkey, unpack(ready, j, math.min(j + 999, #ready)))
  end
  return replies
end

-- Capabilities.acks: with `acking` the commit acks the committed job's delivery as RqQueue.ack does: its entry
-- (ARGV[at]) removed from its set (KEYS[k + 5], after RqDispatcher.keys: the started registry, or the lean in-flight
-- set) and its rq job hash (KEYS[k + 6], none for a lean entry) deleted; a lean delivery whose job was done before
-- this commit (`finished` nil: a replay or a recovery commit, e.g. the run's end after its worker died) also leaves
-- the held-jobs hash, where an earlier commit of it may have kept its JSON. Without (the commit left nothing pending),
-- a lean delivery keeps the JSON of the job the commit marked done (`finished`: its state, 'p' .. JSON) in the
-- held-jobs hash (KEYS[k + 4]),
-- so that it can come back, as an rq job does, if its worker dies before the engine acks it.
local function ack_delivery(at, k, acking, finished)
  if not acking then
    if finished and not KEYS[k + 6] then redis.call('HSET', KEYS[k + 4], ARGV[at], string.sub(finished, 2)) end
    return
  end
  redis.call('ZREM', KEYS[k + 5], ARGV[at])
  if KEYS[k + 6] then
    redis.call('DEL', KEYS[k + 6])
  elseif not finished then
    redis.call('HDEL', KEYS[k + 4], ARGV[at])
  end
end
