-- KEYS: the queue list, its scheduled registry, then (on one Redis) rq's set of queues.
-- ARGV: job key prefix, name, now_iso, due ('' = now), P, lean ('1': the lean layout), the queue group's hash
-- tag ('' on one Redis: see dequeue.lua), then per job: id, run, key, job JSON. The job hashes (job key prefix .. id) are new keys named by the ids; on a Redis
-- Cluster the ids carry the queue group's hash tag (one slot: the runs of the group's jobs are in it too). In the lean layout a job due now that is its run's
-- pending job as it stands (the same JSON) is pushed as a lean entry '<id>:<#run>:<run><job key>' instead (a run's
-- start jobs, say; a retry or a bounce differs from it and stays an rq job); the run hash is named by the run id.
local q, sched = KEYS[1], KEYS[2]
local jp, name, now_iso, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local P, lean, T = ARGV[5], ARGV[6] == '1', ARGV[7]
if due == '' then due = nil end
local ready = {}
for j = 8, #ARGV, 4 do
  local id, run, key, doc = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  if lean and not due and redis.call('HGET', run_key(P, run, T), 'j' .. key) == 'p' .. doc then
    ready[#ready + 1] = id .. ':' .. #run .. ':' .. run .. key
  elseif write_rq_job(jp .. id, id, doc, now_iso, name, run, key, due, sched) then
    ready[#ready + 1] = id
  end
end
for j = 1, #ready, 1000 do  -- unpack fails past ~8000 values (Lua's C stack)
  redis.call('RPUSH', q, unpack(ready, j, math.min(j + 999, #ready)))
end
if KEYS[3] then redis.call('SADD', KEYS[3], q) end
return #ready
