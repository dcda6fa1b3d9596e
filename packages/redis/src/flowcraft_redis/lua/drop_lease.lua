-- ARGV: P, run, key, owner. Drops the lease if that owner holds it: 1 if it did, else 0.
local P, run, key, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if drop_lease(P, run, key, owner) then return 1 end
return 0
