-- KEYS: the run hash. ARGV: key, owner, now, expiry, ttl
if renew_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])) then return 1 end
return 0
