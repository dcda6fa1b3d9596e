-- ARGV: R, name, id, entry
local R, name, id, entry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('ZREM', R .. ':wip:' .. name, entry)
redis.call('DEL', R .. ':job:' .. id)
return 1
