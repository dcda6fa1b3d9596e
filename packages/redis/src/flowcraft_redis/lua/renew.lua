local P, run, key, owner, now, expiry, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
if renew_lease(P, run, key, owner, now, expiry, ttl) then return 1 end
return 0
