-- CoordinationStore.dispatches: the commit script of flowcraft_redis calls dispatch(fired, run, now, at) with its
-- fired jobs ({index, job JSON, due ('' or seconds), job key, spliced} each) and where RqDispatcher.args
-- begin in ARGV: due jobs go to the queue list, later ones to its scheduled registry.
local function dispatch(fired, run, now, at)
  local qkey, skey, jprefix, qset, origin = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local jttl, head, tail, nstatic = tonumber(ARGV[at + 5]), ARGV[at + 6], ARGV[at + 7], tonumber(ARGV[at + 8])
  local static = {}
  for j = at + 9, at + 8 + 2 * nstatic do static[#static + 1] = ARGV[j] end
  local now_iso = ARGV[at + 9 + 2 * nstatic]
  local ids_at = at + 10 + 2 * nstatic
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
  redis.call('SADD', qset, qkey)
end

