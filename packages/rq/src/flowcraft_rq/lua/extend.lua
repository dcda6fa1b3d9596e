-- ARGV: R, name, entry, deadline, id, now_iso
local R, name, entry, deadline, id, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('ZADD', R .. ':wip:' .. name, 'XX', 'CH', deadline, entry) == 1 then
  redis.call('HSET', R .. ':job:' .. id, 'last_heartbeat', now_iso)
end
return 1
