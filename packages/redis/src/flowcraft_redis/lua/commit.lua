local P, run, jkey, now, ttl, flags = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local recovery = string.sub(flags, 1, 1) == '1'
local finish = string.sub(flags, 2, 2) == '1'
local has_completion = string.sub(flags, 3, 3) == '1'
local apply_ctx = string.sub(flags, 4, 4) == '1'
local token, completion, owner = ARGV[7], ARGV[8], ARGV[9]
local jobs, done, meta = P .. 'jobs:' .. run, P .. 'done:' .. run, P .. 'meta:' .. run
local arrs, lease, ctx = P .. 'arrs:' .. run, P .. 'lease:' .. run, P .. 'ctx:' .. run
local i = 10
local fresh = false  -- context is written only with a new completion record: a replay changes nothing

if has_completion then
  local existing = redis.call('HGET', done, jkey)
  if existing then
    local sp = string.find(existing, ' ', 1, true)
    if string.sub(existing, 1, sp - 1) ~= token then
      return {'conflict', string.sub(existing, sp + 1)}
    end
  else
    redis.call('HSET', done, jkey, token .. ' ' .. completion)
    fresh = true
  end
end
apply_ctx = apply_ctx and fresh
local n = tonumber(ARGV[i]); i = i + 1
if apply_ctx and n > 0 then
  for j = i, i + 2 * n - 1, 2 do redis.call('HSET', ctx, ARGV[j], ARGV[j + 1]) end
end
i = i + 2 * n
n = tonumber(ARGV[i]); i = i + 1
if apply_ctx and n > 0 then
  for j = i, i + n - 1 do redis.call('HDEL', ctx, ARGV[j]) end
end
i = i + n
if apply_ctx then redis.call('EXPIRE', ctx, ttl) end

local prefix_len = string.len(run)
local fired, skipped, touched = {}, {}, false
local count = tonumber(ARGV[i]); i = i + 1
for a = 1, count do
  local target, member, arrived, contrib = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local expected, strategy, doc, due = tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  local decision = nil
  local akey = nil
  if expected <= 1 then
    if arrived == '1' then decision = 'fire' else decision = 'skip' end
  else
    akey = P .. 'arr:' .. prefix_len .. ':' .. run .. ':' .. target
    redis.call('HSETNX', akey, member, arrived .. contrib)
    redis.call('EXPIRE', akey, ttl)
    redis.call('SADD', arrs, akey)
    touched = true
    local values = redis.call('HVALS', akey)
    local any = false
    for _, v in ipairs(values) do
      if string.sub(v, 1, 1) == '1' then any = true; break end
    end
    local complete = #values >= expected
    if strategy == 'any' then
      if any then decision = 'fire' elseif complete then decision = 'skip' end
    elseif complete then
      if any then decision = 'fire' else decision = 'skip' end
    end
  end
  if decision == 'skip' then
    if redis.call('HSETNX', jobs, target, 's') == 1 then
      skipped[#skipped + 1] = target
    elseif recovery and redis.call('HGET', jobs, target) == 's' then
      skipped[#skipped + 1] = target
    end
  elseif decision == 'fire' then
    local body = doc
    local spliced = false
    if akey then
      local pairs_ = redis.call('HGETALL', akey)
      local parts = {}
      for j = 1, #pairs_, 2 do
        local v = pairs_[j + 1]
        if string.sub(v, 1, 1) == '1' then
          parts[#parts + 1] = cjson.encode(pairs_[j]) .. ':' .. string.sub(v, 2)
        end
      end
      body = string.sub(doc, 1, -2) .. ',"input":{' .. table.concat(parts, ',') .. '}}'
      spliced = true
    end
    if redis.call('HSETNX', jobs, target, 'p' .. body) == 1 then
      redis.call('HINCRBY', meta, 'pending', 1)
      local decode = 0
      if spliced then decode = 1 end
      fired[#fired + 1] = {a, body, due, target, decode}
    elseif recovery then
      local state = redis.call('HGET', jobs, target)
      if string.sub(state, 1, 1) == 'p' then
        fired[#fired + 1] = {a, string.sub(state, 2), due, target, 1}
      end
    end
  end
end

-- finishing: the job is done and (Transition.owner) that owner's lease is dropped; afterwards the owner holds
-- no lease on the job either way, so the reply says released (releases_lease)
local released = 0
if finish then
  local state = redis.call('HGET', jobs, jkey)
  if state and string.sub(state, 1, 1) == 'p' then
    redis.call('HSET', jobs, jkey, 'd')
    redis.call('HINCRBY', meta, 'pending', -1)
  end
  if owner ~= '' then
    drop_lease(P, run, jkey, owner)
    released = 1
  end
end
redis.call('HSET', meta, 'activity', ARGV[4])
for _, key in ipairs({jobs, done, meta, lease}) do redis.call('EXPIRE', key, ttl) end
if touched then redis.call('EXPIRE', arrs, ttl) end
redis.call('EXPIRE', P .. 'status:' .. run, ttl)

-- dispatch (dispatches): with a queue on this Redis, the queue's own Lua (Dispatcher.lua, prepended
-- to this script) pushes the fired jobs; its ARGV follow
local ndisp = tonumber(ARGV[i]); i = i + 1
if ndisp > 0 and #fired > 0 then dispatch(fired, run, now, i) end

local pending = tonumber(redis.call('HGET', meta, 'pending') or '0')
local parked = tonumber(redis.call('HGET', meta, 'parked') or '0')
local out = {'ok', pending, parked, released, #fired}
for _, entry in ipairs(fired) do
  out[#out + 1] = entry[1]
  if entry[5] == 1 then out[#out + 1] = entry[2] else out[#out + 1] = '' end
end
out[#out + 1] = #skipped
for _, key in ipairs(skipped) do out[#out + 1] = key end
return out
