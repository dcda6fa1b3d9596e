-- KEYS: the delivery's set (the started registry, or the lean in-flight set), [its rq job hash].
-- ARGV: entry, deadline, now_iso
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1]) == 1 and KEYS[2] then
  redis.call('HSET', KEYS[2], 'last_heartbeat', ARGV[3])
end
return 1
