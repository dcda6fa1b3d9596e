-- ARGV: R, name, now_iso, due ('' = now), ttl, nstatic, static pairs..., then per job: id, run, key, data
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
