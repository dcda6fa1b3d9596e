-- flowcraft_redis.handover sweep: claim up to ARGV[3] handed jobs of the in-flight set KEYS[1] whose visibility
-- deadline is at or before ARGV[1] (now): each gets the deadline ARGV[2] (now + the visibility timeout), so no
-- other sweeper takes it meanwhile, and is returned; the caller republishes each to its queue and then removes it
-- (a sweeper that dies in between leaves it to the next sweep once that deadline passed too).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
