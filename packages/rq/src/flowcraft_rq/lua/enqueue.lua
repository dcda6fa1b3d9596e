-- KEYS: the queue list, its scheduled registry, then (on one Redis) rq's set of queues.
-- ARGV: job key prefix, name, now_iso, due ('' = now), ttl, then per job: id, run, key, job JSON. The job hashes
-- (job key prefix .. id) are new keys named by the ids; on a Redis Cluster the ids carry the queue's hash tag
-- (one slot).
local q, sched = KEYS[1], KEYS[2]
local jp, name, now_iso, due, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if due == '' then due = nil end
local ready = {}
for j = 6, #ARGV, 4 do
  local id = ARGV[j]
  if write_rq_job(jp .. id, id, ARGV[j + 3], now_iso, name, ARGV[j + 1], ARGV[j + 2], due, sched, ttl) then
    ready[#ready + 1] = id
  end
end
if #ready > 0 then redis.call('RPUSH', q, unpack(ready)) end
if KEYS[3] then redis.call('SADD', KEYS[3], q) end
return #ready
