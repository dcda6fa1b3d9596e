-- KEYS: a status index (sorted set). ARGV: member, score pairs read from it. Removes each member whose score is
-- still the one read (an entry written again since then, by a transition back to this status, stays).
local dropped = 0
for j = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[j])
  if score and tonumber(score) == tonumber(ARGV[j + 1]) then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[j])
  end
end
return dropped
