-- CoordinationStore.dispatches: the commit script of flowcraft_redis calls dispatch(fired, run, now, at) with its
-- fired jobs ({index, job JSON, due ('' or seconds), job key, spliced} each) and where RqDispatcher.args
-- begin in ARGV; RqDispatcher.keys (the queue list, its scheduled registry) are KEYS[3] and KEYS[4]: due jobs
-- go to the queue list, later ones to its scheduled registry. (The queue is in rq's set of queues since the
-- run's first job was enqueued.)
local function dispatch(fired, run, now, at)
  local qkey, skey, jprefix, origin = KEYS[3], KEYS[4], ARGV[at], ARGV[at + 1]
  local jttl, head, tail, nstatic = tonumber(ARGV[at + 2]), ARGV[at + 3], ARGV[at + 4], tonumber(ARGV[at + 5])
  local static = {}
  for j = at + 6, at + 5 + 2 * nstatic do static[#static + 1] = ARGV[j] end
  local now_iso = ARGV[at + 6 + 2 * nstatic]
  local ids_at = at + 7 + 2 * nstatic
  local ready = {}
  for f, entry in ipairs(fired) do
    local id = ARGV[ids_at + f - 1]
    local due = tonumber(entry[3])
    if not (due and due > now) then due = nil end
    if write_rq_job(jprefix .. id, id, static, head .. entry[2] .. tail, now_iso, origin, run, entry[4], due, skey,
        jttl) then
      ready[#ready + 1] = id
    end
  end
  if #ready > 0 then redis.call('RPUSH', qkey, unpack(ready)) end
end

