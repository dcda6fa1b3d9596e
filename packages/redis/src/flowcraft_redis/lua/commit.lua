-- KEYS: the run hash, the run's context hash, its status hash, (ending) the run's idx:status:<s> of each active
-- status (ACTIVE) and of 'completed', then the queue's Dispatcher.keys (when it dispatches or acks) and the keys of
-- the ack (Dispatcher.ack_args).
-- ARGV: run, job key, now, flags (recovery, finish, has completion, apply context, status hash here, ending:
-- '0'/'1' each), completion record (token .. ' ' .. completion JSON, as stored), owner; (ending: Transition.end) the
-- status TTL, the run's change channel, the result's JSON, the record fields (n, name, JSON...); context updates
-- (n, key, value...), context
-- deletes (n, key...); arrivals (n, then per arrival its target and kind: '1' one expected member, arrived, then the
-- job JSON; '0' one expected member, skipped; 'j' a join: member, arrived '1'/'0', contribution JSON, expected
-- members (n, id...), strategy, job JSON; 'k' a counted join (flowcraft_redis.coordination.COUNTED_JOIN): member,
-- arrived, contribution, how many expected, strategy; 'w' a counted join with its members, as 'j'; a fired job's
-- due time follows its kind after a space: '1 <due>'); then
-- dispatch ('0'/'1'), how many fired jobs to hand to the owner (continues), the expiry of the lease it takes on
-- each, the status and updated_at of the run record the caller already holds ('' and '': none), the ack (n, then
-- the queue's Dispatcher.ack_args), and (dispatching) the queue's Dispatcher.args. TTL and TTL_TEXT (the state
-- TTL in seconds), ACTIVE_COUNT (how many active statuses) and RESULT_KEY (the context key of a run's result) are
-- constants prepended by flowcraft_redis.scripts.commit, which also puts status_change.lua's change_status and the
-- list ACTIVE of the active statuses where the run's end uses them (a function or table a script defines is made on
-- every call that reaches it: only the commits that end a run make them).
-- Each argument costs the call ~800 instructions whatever its size (a Lua string made, hashed and collected), so
-- what a one-member arrival does not need is not sent.
-- A counted join's member ('k') reads and writes its own arrival field and the join's count ('n' .. target:
-- 'recorded arrived'), so a join of n members costs O(n) over its run, not O(n^2); the script answers {'members'},
-- having written nothing, when the join has no count yet (its first member; or members an older version recorded
-- without one) or fires now (its input map needs every member), and the caller sends the commit again with the
-- join's members ('w'), which reads them all, as 'j' does, and writes the count.
-- The run's coordination hash is read once (HMGET of every field this commit may look at), changed in a
-- local overlay that later steps read through, and written once (HSET), so the rules below read like
-- flowcraft.spi.apply_transition over tables.
-- The run hash's TTL is refreshed when the commit finds its field '#ttl' (the whole second of the last refresh)
-- missing or older than an eighth of the TTL: after any commit the hash has at least 7/8 of the TTL left, and the
-- field lives and dies with the hash (a hash created again has none), so most commits skip the EXPIRE. The context
-- hash's TTL likewise, by the run hash's field '#ctxttl' (the second a commit last wrote the context and set its
-- TTL), which a commit that deletes context keys clears: a context hash emptied by deletes is gone, and the next
-- write creates it again.
local run, jkey, now, ttl, flags = ARGV[1], ARGV[2], tonumber(ARGV[3]), TTL, ARGV[4]
local f1, f2, f3, f4, f5, f6 = string.byte(flags, 1, 6)  -- 49: '1' (one call, no strings made)
local recovery, finish, has_completion, apply_ctx, status_here = f1 == 49, f2 == 49, f3 == 49, f4 == 49, f5 == 49
local ending = f6 == 49  -- Transition.end given (ends): the run's end arguments from ARGV[7]
local completion, owner = ARGV[5], ARGV[6]
local R, ctx = KEYS[1], KEYS[2]
local qk = 4  -- where the queue's keys begin in KEYS (after the end's status indexes when ending)

local i = 7
if ending then
  i = 11 + 2 * tonumber(ARGV[10])
  qk = 4 + ACTIVE_COUNT + 1
end
local nupdates = tonumber(ARGV[i]); local updates_at = i + 1; i = i + 1 + 2 * nupdates
local ndeletes = tonumber(ARGV[i]); local deletes_at = i + 1; i = i + 1 + ndeletes
-- the context updates and deletes of a new completion record (`fresh`) written, and the run's result (`result`: its
-- JSON, nil: none; after the deletes, as the run's end follows the commit), the context hash's TTL refreshed when
-- due; returns the new value of the run hash's '#ctxttl' (nil: unchanged), given its current one
local function write_context(current, fresh, result)
  local nu, nd = 0, 0
  if fresh then nu, nd = nupdates, ndeletes end
  if nu + nd == 0 and not result then return nil end
  local last, from = updates_at + 2 * nu - 1, updates_at
  if result and nd == 0 and nu <= 199 then  -- one HSET
    redis.call('HSET', ctx, RESULT_KEY, result, unpack(ARGV, updates_at, last))
    from, result = last + 1, nil
  end
  for j = from, last, 400 do
    redis.call('HSET', ctx, unpack(ARGV, j, math.min(j + 399, last)))
  end
  for j = deletes_at, deletes_at + nd - 1, 400 do
    redis.call('HDEL', ctx, unpack(ARGV, j, math.min(j + 399, deletes_at + nd - 1)))
  end
  if result then redis.call('HSET', ctx, RESULT_KEY, result) end
  local set = tonumber(current or '')
  if nd > 0 then
    redis.call('EXPIRE', ctx, TTL_TEXT)
    if set then return '' end
  elseif not set or now - set >= ttl / 8 then
    redis.call('EXPIRE', ctx, TTL_TEXT)
    return math.floor(now)
  end
  return nil
end

-- The run record for a hand-over, and whether it is the one the caller holds (same status and updated_at, sent as
-- `known_status`, `known_updated`: then only its status is read, and the reply says 1 instead of the record); the
-- record is empty when the status is not on this Redis
local function run_record(known_status, known_updated)
  if status_here and known_updated ~= '' then
    local got = redis.call('HMGET', KEYS[3], 'status', 'updated_at')
    if got[1] == known_status and got[2] == known_updated then return {'status', got[1]}, true end
  end
  if status_here then return redis.call('HGETALL', KEYS[3]), false end
  return {}, false
end

-- ends: the run's end (Transition.end), as StatusStore.transition_with_context(run, ACTIVE, 'completed', fields,
-- {_result = result}) would: the record moved when it is in an active status (so a replay of the commit that ended
-- the run ends nothing); returns whether it moved it. The commit writes the result with its context updates and
-- acks the delivery. Made only by the commits given an end.
local end_run = nil
if ending then
  --[[status_change.lua]]
  end_run = function()
    return change_status(KEYS[3], 4, run, tonumber(ARGV[7]), 'completed', ARGV[3], ARGV[8], ACTIVE, 11,
                         10 + 2 * tonumber(ARGV[10]))
  end
end

-- The common cases, a chain node, a join's member and a terminal node: a new completion record, finishing, not in
-- recovery, one arrival (one expected member that arrived, or a join's member, without a due time) or none. The
-- rules below without their general tables. It writes nothing and the general path below decides when the run hash
-- shows another case (a completion record there: a replay or a conflict; the target's job already there; a join it
-- skips) or the job fires itself. Inline rather than a function: a closure over the ~25 locals it
-- reads was ~12k instructions made on every call.
local none = ARGV[i] == '0'  -- no arrival
local target, kind = ARGV[i + 1], ARGV[i + 2]
-- (not a job that fires itself: its fields are read again in between; not a join of 1000 members or more: its
-- fields are read in slices there)
if not recovery and has_completion and finish and (none or (ARGV[i] == '1' and target ~= jkey
   and (kind == '1' or kind == 'j' and #ARGV[i + 6] <= 3))) then
  local nexpected, doc, b = 0, nil, i
  if none then
    target = nil
  elseif kind == '1' then
    doc, b = ARGV[i + 3], i + 3
  else
    nexpected = tonumber(ARGV[i + 6])
    doc, b = ARGV[i + 8 + nexpected], i + 8 + nexpected
  end
  local dispatching = ARGV[b + 1] == '1'
  local hand_up_to, hand_expiry = tonumber(ARGV[b + 2]), ARGV[b + 3]
  local nack = tonumber(ARGV[b + 6])
  local handing = dispatching and hand_up_to > 0 and owner ~= ''
  local cfield, jfield, lfield, tfield = 'c' .. jkey, 'j' .. jkey, 'l' .. jkey, nil
  local f
  if none then
    f = {cfield, jfield, lfield, '#pending', '#parked', '#ttl', '#ctxttl'}
  else
    tfield = 'j' .. target
    f = {cfield, jfield, lfield, '#pending', '#parked', '#ttl', '#ctxttl', tfield, 'l' .. target, 'c' .. target,
         nil, nil, nil, nil, nil, nil, nil, nil}
  end
  local base = nil  -- a join's arrival fields: base .. member, read from position 11
  if nexpected > 0 then
    base = 'a' .. string.format('%d', #target) .. ' ' .. target  -- %d: not formatted as a float
    for m = 1, nexpected do f[10 + m] = base .. ARGV[i + 6 + m] end
  end
  local v = redis.call('HMGET', R, unpack(f))
  local skip = v[1] or v[8]  -- the general path decides
  local w = {cfield, completion, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
  local body = doc
  if base and not skip then  -- the join's decision, with this member's arrival recorded if it is not yet
    local member, arrived = ARGV[i + 3], ARGV[i + 4]
    local recorded, any = 0, false
    for m = 1, nexpected do
      local value = v[10 + m]
      if not value and ARGV[i + 6 + m] == member then
        value = arrived .. ARGV[i + 5]
        v[10 + m] = value
        w[#w + 1] = f[10 + m]; w[#w + 1] = value
      end
      if value then
        recorded = recorded + 1
        if string.sub(value, 1, 1) == '1' then any = true end
      end
    end
    local complete = recorded >= nexpected
    if ARGV[i + 7 + nexpected] == 'any' then
      if not any and complete then skip = true end  -- skipped: the general path
      if not any then body = nil end
    elseif not complete then
      body = nil
    elseif not any then
      skip = true
    end
    -- fired: the input map {member: contribution} spliced from the stored JSON texts
    if body and not skip then
      local parts = {}
      for m = 1, nexpected do
        local value = v[10 + m]
        if value and string.sub(value, 1, 1) == '1' then
          parts[#parts + 1] = cjson.encode(ARGV[i + 6 + m]) .. ':' .. string.sub(value, 2)
        end
      end
      body = string.sub(body, 1, -2) .. ',"input":{' .. table.concat(parts, ',') .. '}}'
    end
  end
  if not skip then
    if body then w[#w + 1] = tfield; w[#w + 1] = 'p' .. body end
    local pending_delta, finished, released = body and 1 or 0, nil, 0
    local state = v[2]
    if state and string.sub(state, 1, 1) == 'p' then
      finished = state
      w[#w + 1] = jfield; w[#w + 1] = 'd'
      pending_delta = pending_delta - 1
    end
    if owner ~= '' then
      if lease_holder(v[3]) == owner then w[#w + 1] = lfield; w[#w + 1] = '' end
      released = 1
    end
    local handed, nhanded, rec, same = {}, 0, nil, false
    if handing and body then
      rec, same = run_record(ARGV[b + 4], ARGV[b + 5])
      if not status_here or run_active(rec) then
        local expires, holder = lease_parts(v[9])
        if not (holder and holder ~= owner and expires > now) then
          w[#w + 1] = 'l' .. target; w[#w + 1] = hand_expiry .. ' ' .. owner
          handed[1] = true
          nhanded = 1
        end
      end
    end
    local pending = tonumber(v[4] or '0') + pending_delta
    local ended = ending and pending == 0 and tonumber(v[5] or '0') == 0 and end_run()
    if apply_ctx or ended then
      local set = write_context(v[7], apply_ctx, ended and ARGV[9] or nil)
      if set then w[#w + 1] = '#ctxttl'; w[#w + 1] = set end
    end
    if pending_delta ~= 0 then w[#w + 1] = '#pending'; w[#w + 1] = string.format('%d', pending) end
    w[#w + 1] = '#activity'; w[#w + 1] = ARGV[3]
    local refreshed = tonumber(v[6] or '')
    local expire = not refreshed or now - refreshed >= ttl / 8
    if expire then w[#w + 1] = '#ttl'; w[#w + 1] = math.floor(now) end
    redis.call('HSET', R, unpack(w))
    if expire then redis.call('EXPIRE', R, TTL_TEXT) end
    local replies = {}
    if dispatching and body then
      replies = dispatch({{1, body, '', target, base and 1 or 0}}, run, now, b + 7 + nack, qk, handed)
    end
    if nack > 0 then ack_delivery(b + 7, qk, pending > 0 or ended, finished) end
    if ending then  -- the record after the run's end last (0: not ended), as the general path's reply has it
      local record = 0
      if ended then record = redis.call('HGETALL', KEYS[3]) end
      if not body then return {'ok', pending, tonumber(v[5] or '0'), released, 0, 0, 0, record} end
      if nhanded == 0 then
        return {'ok', pending, tonumber(v[5] or '0'), released, 1, 1, base and body or '', 0, 0, record}
      end
    end
    if not body then return {'ok', pending, tonumber(v[5] or '0'), released, 0, 0, 0} end
    if nhanded == 0 then return {'ok', pending, tonumber(v[5] or '0'), released, 1, 1, base and body or '', 0, 0} end
    -- handed over: a reply of its own ('ok1': the queue's reply, a table, spliced in as the tail; 'ok2': the queue's
    -- reply is one value, the last): pending, parked, the fired job's JSON when spliced (''), the run record (1: the
    -- one the caller holds), the job's completion record, then the queue's reply. Each table a reply holds costs
    -- its conversion ~5k instructions.
    local out = {'ok1', pending, tonumber(v[5] or '0'), base and body or '', 1, v[10], nil, nil, nil, nil}
    if not same then out[5] = rec end
    local handed_reply = replies[1]
    if type(handed_reply) == 'table' then
      for n, part in ipairs(handed_reply) do out[6 + n] = part end
    else
      out[1] = 'ok2'
      out[7] = handed_reply
    end
    return out
  end
end

-- Tables are made with room (HASH16, ARRAY16: constructors of nils size them) rather than grown one step at a time:
-- each step reallocates and rehashes, a measurable part of a commit (~2 % of its instructions).
local function HASH16()
  return {_0 = nil, _1 = nil, _2 = nil, _3 = nil, _4 = nil, _5 = nil, _6 = nil, _7 = nil, _8 = nil, _9 = nil,
          _10 = nil, _11 = nil, _12 = nil, _13 = nil, _14 = nil, _15 = nil}
end
local function ARRAY16()
  return {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
end

local fields = {'c' .. jkey, 'j' .. jkey, 'l' .. jkey, '#pending', '#parked', '#ttl', '#ctxttl', nil, nil, nil, nil, nil,
                nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
local arrivals = {}
for a = 1, tonumber(ARGV[i]) do
  local target, kind, due = ARGV[i + 1], ARGV[i + 2], ''
  if #kind > 1 then due = string.sub(kind, 3); kind = string.sub(kind, 1, 1) end
  local arrival
  if kind == 'j' or kind == 'w' then
    local nexpected = tonumber(ARGV[i + 6])
    arrival = {target = target, member = ARGV[i + 3], arrived = ARGV[i + 4], contrib = ARGV[i + 5], expected = {},
               joined = true, counted = kind == 'w'}
    for m = 1, nexpected do arrival.expected[m] = ARGV[i + 6 + m] end
    -- a join's arrival fields (string.format's %d: a number concatenated is formatted as a float, ~5x the work)
    arrival.base = 'a' .. string.format('%d', #target) .. ' ' .. target
    local j = i + 7 + nexpected
    arrival.strategy, arrival.doc = ARGV[j], ARGV[j + 1]
    i = j + 1
    fields[#fields + 1] = 'j' .. target
    for _, member in ipairs(arrival.expected) do fields[#fields + 1] = arrival.base .. member end
  elseif kind == 'k' then  -- a counted join's member: its own arrival field and the join's count 'n' .. target
    arrival = {target = target, member = ARGV[i + 3], arrived = ARGV[i + 4], contrib = ARGV[i + 5],
               nexpected = tonumber(ARGV[i + 6]), strategy = ARGV[i + 7], joined = true, counted = true}
    arrival.base = 'a' .. string.format('%d', #target) .. ' ' .. target
    i = i + 7
    fields[#fields + 1] = 'j' .. target
    fields[#fields + 1] = arrival.base .. arrival.member
    fields[#fields + 1] = 'n' .. target
  elseif kind == '1' then
    arrival = {target = target, arrived = kind, doc = ARGV[i + 3], joined = false}
    i = i + 3
    fields[#fields + 1] = 'j' .. target
  else
    arrival = {target = target, arrived = kind, joined = false}
    i = i + 2
    fields[#fields + 1] = 'j' .. target
  end
  arrival.due = due
  arrivals[a] = arrival
end
local dispatching = ARGV[i + 1] == '1'
local hand_up_to, hand_expiry = tonumber(ARGV[i + 2]), ARGV[i + 3]
local known_status, known_updated = ARGV[i + 4], ARGV[i + 5]
local nack = tonumber(ARGV[i + 6])
local ack_at = i + 7
local dispatch_at = ack_at + nack
-- continues: a job handed to the owner has its lease taken in this hash, so its lease (and completion) is read
local handing = dispatching and hand_up_to > 0 and owner ~= '' and not recovery
if handing then
  for _, arrival in ipairs(arrivals) do
    fields[#fields + 1] = 'l' .. arrival.target
    fields[#fields + 1] = 'c' .. arrival.target
  end
end

local values
-- unpack fails past ~8000 values (Lua's C stack, LUAI_MAXCSTACK): a commit of many arrivals (a wide fan-out, a
-- join of many members) reads the fields in slices, as its writes below are made
if #fields <= 1000 then values = redis.call('HMGET', R, unpack(fields)) else
  values = {}
  for j = 1, #fields, 1000 do
    local got = redis.call('HMGET', R, unpack(fields, j, math.min(j + 999, #fields)))
    for k = 1, #got do values[j + k - 1] = got[k] end
  end
end
local stored = HASH16()
for n, field in ipairs(fields) do stored[field] = values[n] end
local written, order = HASH16(), ARRAY16()
local function put(field, value)
  if not written[field] then written[field] = true; order[#order + 1] = field end
  stored[field] = value
end

local fresh = false  -- context is written only with a new completion record: a replay changes nothing
if has_completion then
  local existing = stored['c' .. jkey]
  if existing then
    local sp = string.find(existing, ' ', 1, true)
    if string.sub(existing, 1, sp - 1) ~= string.sub(completion, 1, string.find(completion, ' ', 1, true) - 1) then
      return {'conflict', string.sub(existing, sp + 1)}
    end
  else
    put('c' .. jkey, completion)
    fresh = true
  end
end
local pending_delta = 0
local fired, skipped = {}, {}
for a, arrival in ipairs(arrivals) do
  local decision = nil
  local joined = arrival.joined
  if not joined then
    if arrival.arrived == '1' then decision = 'fire' else decision = 'skip' end
  else
    local own = arrival.base .. arrival.member
    local recorded, narrived, nexpected = 0, 0, nil
    if arrival.expected then
      if not stored[own] then put(own, arrival.arrived .. arrival.contrib) end
      for _, member in ipairs(arrival.expected) do
        local v = stored[arrival.base .. member]
        if v then
          recorded = recorded + 1
          if string.sub(v, 1, 1) == '1' then narrived = narrived + 1 end
        end
      end
      nexpected = #arrival.expected
      -- 'w': the count of a counted join written from its members' fields (which an old-format join lacks)
      if arrival.counted then put('n' .. arrival.target, string.format('%d %d', recorded, narrived)) end
    else  -- 'k': the join's count, 'recorded arrived'; without one (the join's first member, or members recorded
      -- before counts were kept) the caller sends the members ('w')
      local count = stored['n' .. arrival.target]
      if not count then return {'members'} end
      local sp = string.find(count, ' ', 1, true)
      recorded, narrived = tonumber(string.sub(count, 1, sp - 1)), tonumber(string.sub(count, sp + 1))
      if not stored[own] then
        put(own, arrival.arrived .. arrival.contrib)
        recorded = recorded + 1
        if arrival.arrived == '1' then narrived = narrived + 1 end
        put('n' .. arrival.target, string.format('%d %d', recorded, narrived))
      end
      nexpected = arrival.nexpected
    end
    local any = narrived > 0
    local complete = recorded >= nexpected
    if arrival.strategy == 'any' then
      if any then decision = 'fire' elseif complete then decision = 'skip' end
    elseif complete then
      if any then decision = 'fire' else decision = 'skip' end
    end
  end
  local field = 'j' .. arrival.target
  local state = stored[field]
  if decision == 'skip' then
    if not state then
      put(field, 's')
      skipped[#skipped + 1] = arrival.target
    elseif recovery and state == 's' then
      skipped[#skipped + 1] = arrival.target
    end
  elseif decision == 'fire' then
    -- a counted join that fires now: its input map needs every member, which the caller sends then ('w')
    if not state and not arrival.doc then return {'members'} end
    local body = arrival.doc
    if joined and not state then  -- the input map {member: contribution} spliced from the stored JSON texts
      local parts = {}
      for _, member in ipairs(arrival.expected) do
        local v = stored[arrival.base .. member]
        if v and string.sub(v, 1, 1) == '1' then
          parts[#parts + 1] = cjson.encode(member) .. ':' .. string.sub(v, 2)
        end
      end
      body = string.sub(body, 1, -2) .. ',"input":{' .. table.concat(parts, ',') .. '}}'
    end
    if not state then
      put(field, 'p' .. body)
      pending_delta = pending_delta + 1
      fired[#fired + 1] = {a, body, arrival.due, arrival.target, joined and 1 or 0}
    elseif recovery and string.sub(state, 1, 1) == 'p' then
      fired[#fired + 1] = {a, string.sub(state, 2), arrival.due, arrival.target, 1}
    end
  end
end

-- finishing: the job is done and (Transition.owner) that owner's lease is dropped; afterwards the owner holds
-- no lease on the job either way, so the reply says released (releases_lease)
local released = 0
local finished = nil  -- the state of the job this commit marks done ('p' .. its JSON)
if finish then
  local state = stored['j' .. jkey]
  if state and string.sub(state, 1, 1) == 'p' then
    finished = state
    put('j' .. jkey, 'd')
    pending_delta = pending_delta - 1
  end
  if owner ~= '' then
    if lease_holder(stored['l' .. jkey]) == owner then put('l' .. jkey, '') end
    released = 1
  end
end
-- continues: up to hand_up_to fired jobs due now go to the owner, with their lease taken for it (unless another
-- owner's live lease is there), as the queue's receive with prefetch would; only for an active run's jobs (a
-- run whose status is not on this Redis is checked by the engine, which reads the record)
local handed, nhanded, rec = {}, 0, {}
local same = false  -- the run record is the one the caller holds (same status and updated_at): not sent back
if handing and #fired > 0 then
  rec, same = run_record(known_status, known_updated)
  if not status_here or run_active(rec) then
    for f, entry in ipairs(fired) do
      if nhanded >= hand_up_to then break end
      local due = tonumber(entry[3])
      if not (due and due > now) then
        local expires, holder = lease_parts(stored['l' .. entry[4]])
        if not (holder and holder ~= owner and expires > now) then
          put('l' .. entry[4], hand_expiry .. ' ' .. owner)
          handed[f] = true
          nhanded = nhanded + 1
        end
      end
    end
  end
end
local pending = tonumber(stored['#pending'] or '0') + pending_delta
-- ends: a finishing commit that leaves nothing pending or parked ends the run (end_run), its result written to the
-- context with the commit's updates, the delivery acked below
local ended = ending and finish and pending == 0 and tonumber(stored['#parked'] or '0') == 0 and end_run()
-- the context is written with a new completion record only (a replay changes nothing), and with the run's end
if (apply_ctx and fresh) or ended then
  local set = write_context(stored['#ctxttl'], apply_ctx and fresh, ended and ARGV[9] or nil)
  if set then put('#ctxttl', set) end
end
if pending_delta ~= 0 then put('#pending', string.format('%d', pending)) end
put('#activity', ARGV[3])
local refreshed = tonumber(stored['#ttl'] or '')
local expire = not refreshed or now - refreshed >= ttl / 8
if expire then put('#ttl', math.floor(now)) end
local pairs_ = ARRAY16()
for _, field in ipairs(order) do
  pairs_[#pairs_ + 1] = field
  pairs_[#pairs_ + 1] = stored[field]
end
for j = 1, #pairs_, 400 do redis.call('HSET', R, unpack(pairs_, j, math.min(j + 399, #pairs_))) end
if expire then redis.call('EXPIRE', R, TTL_TEXT) end

-- dispatch (dispatches): with a queue on this Redis, the queue's own Lua (Dispatcher.lua, prepended
-- to this script) pushes the fired jobs and puts the handed ones in its in-flight set; its KEYS follow the
-- run's three, its ARGV come last
local replies = {}
if dispatching and #fired > 0 then replies = dispatch(fired, run, now, dispatch_at, qk, handed) end
-- acks: the committed job's delivery is acked with the transition when jobs remain pending (the jobs it fired are
-- on the queue, or handed over, by now) or when it ended the run; a commit that leaves nothing pending otherwise
-- never acks (the queue's Lua is still told, with the state of the job it marked done, 'p' .. its JSON: the
-- delivery must be able to come back until the engine has published the run's end)
if nack > 0 then ack_delivery(ack_at, qk, pending > 0 or ended, finished) end

local out = {'ok', pending, tonumber(stored['#parked'] or '0'), released, #fired, nil, nil, nil, nil, nil, nil, nil, nil,
             nil, nil, nil}  -- room for a handed job's reply, as HASH16 and ARRAY16 make
for _, entry in ipairs(fired) do
  out[#out + 1] = entry[1]
  if entry[5] == 1 then out[#out + 1] = entry[2] else out[#out + 1] = '' end
end
out[#out + 1] = #skipped
for _, key in ipairs(skipped) do out[#out + 1] = key end
-- the handed jobs: the run record once (1: the one the caller holds), then per job its position in fired, the
-- queue's reply and its completion
out[#out + 1] = nhanded
if nhanded > 0 then
  if same then out[#out + 1] = 1 else out[#out + 1] = rec end
  for f, entry in ipairs(fired) do
    if handed[f] then
      out[#out + 1] = f
      out[#out + 1] = replies[f]
      out[#out + 1] = stored['c' .. entry[4]]
    end
  end
end
-- ending: the run's record after its end (HGETALL), 0 when the commit did not end the run
if ending then
  if ended then out[#out + 1] = redis.call('HGETALL', KEYS[3]) else out[#out + 1] = 0 end
end
return out
