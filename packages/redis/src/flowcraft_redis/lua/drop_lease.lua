-- KEYS: the run hash. ARGV: key, owner. Drops the lease if that owner holds it: 1 if it did, else 0.
if drop_lease(KEYS[1], ARGV[1], ARGV[2]) then return 1 end
return 0
