-- StatusStore.create. KEYS: the status hash, the run's idx:created and idx:status:<status>. ARGV: run, ttl, status,
-- created, updated, then field/value pairs (create_record, status_record.lua)
if create_record(1, 1, #ARGV) then return 1 end
return 0
