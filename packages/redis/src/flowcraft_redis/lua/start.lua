-- CoordinationStore.start (starts): a run's record created (as StatusStore.create), its first jobs scheduled (as
-- schedule.lua) and queued (the queue's dispatch, as a commit queues what it fires), in one script; nothing
-- written when the run's record exists.
-- KEYS: the status hash, the run's idx:created and idx:status:<status> (create_record), the run hash, then the
-- queue's Dispatcher.keys, then (register) the set the queue's key is added to (Dispatcher.registry).
-- ARGV: the number of the record's field/value items (n), run, the status TTL, status, created, updated (= now),
-- the n items, the coordination TTL, register ('1': the last key is Dispatcher.registry), the number of jobs (m),
-- then per job: key, JSON, due ('' or seconds); then Dispatcher.args. Returns 1 (started) or 0 (the record
-- exists).
local n = tonumber(ARGV[1])
if not create_record(1, 2, 6 + n) then return 0 end
local run, now, R = ARGV[2], ARGV[6], KEYS[4]
local at = 7 + n
local ttl, register, m = ARGV[at], ARGV[at + 1] == '1', tonumber(ARGV[at + 2])
at = at + 3
-- the jobs that are not in the run hash yet (a run's hash may outlive its record): inserted as pending
local fields = {}
for j = 1, m do fields[j] = 'j' .. ARGV[at + 3 * (j - 1)] end
fields[m + 1] = '#pending'
-- unpack fails past ~8000 values (Lua's C stack, LUAI_MAXCSTACK): a start of many jobs reads and writes in slices
local stored
if m < 1000 then stored = redis.call('HMGET', R, unpack(fields)) else
  stored = {}
  for j = 1, m + 1, 1000 do
    local got = redis.call('HMGET', R, unpack(fields, j, math.min(j + 999, m + 1)))
    for k = 1, #got do stored[j + k - 1] = got[k] end
  end
end
local writes, fired = {}, {}
for j = 1, m do
  if not stored[j] then
    local p = at + 3 * (j - 1)
    writes[#writes + 1] = fields[j]
    writes[#writes + 1] = 'p' .. ARGV[p + 1]
    fired[#fired + 1] = {j, ARGV[p + 1], ARGV[p + 2], ARGV[p], 0}
  end
end
-- as a commit leaves it: '#ttl' the whole second of the hash's last TTL refresh (commit.lua)
writes[#writes + 1] = '#activity'
writes[#writes + 1] = now
writes[#writes + 1] = '#ttl'
writes[#writes + 1] = string.format('%d', math.floor(tonumber(now)))
if #fired > 0 then
  writes[#writes + 1] = '#pending'
  writes[#writes + 1] = string.format('%d', tonumber(stored[m + 1] or '0') + #fired)
end
for j = 1, #writes, 1000 do redis.call('HSET', R, unpack(writes, j, math.min(j + 999, #writes))) end
redis.call('EXPIRE', R, ttl)
if #fired > 0 then
  dispatch(fired, run, tonumber(now), at + 3 * m, 5, {})
  if register then redis.call('SADD', KEYS[#KEYS], KEYS[5]) end
end
return 1
