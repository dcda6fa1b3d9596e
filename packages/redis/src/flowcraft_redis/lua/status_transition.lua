-- StatusStore.transition (change_status, status_change.lua). KEYS: the status hash, the run's context hash
-- (written only with context pairs: writes_context), then the run's idx:status:<s> of each allowed from-status and
-- of the new status (on a Redis Cluster its queue group's: all in the run's slot).
-- ARGV: run, ttl, to, now, the run's change channel, nfrom, from-statuses..., nctx, the context's ttl, nctx
-- context key/value pairs (JSON, as RedisContext.apply writes them), then the record's field/value pairs.
-- Returns the new record (HGETALL), or false when it did not move it.
local run, ttl, to, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local nfrom = tonumber(ARGV[6])
local from = {}
for j = 1, nfrom do from[j] = ARGV[6 + j] end
local nctx = tonumber(ARGV[7 + nfrom])
local fields = 9 + nfrom + 2 * nctx
if not change_status(KEYS[1], 3, run, ttl, to, now, ARGV[5], from, fields, #ARGV) then return false end
if nctx > 0 then
  -- the transition won: its context values go in the same step (a run's _result with its final status)
  redis.call('HSET', KEYS[2], unpack(ARGV, 9 + nfrom, fields - 1))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8 + nfrom]))
end
return redis.call('HGETALL', KEYS[1])
