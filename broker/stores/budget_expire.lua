-- Release every reservation past its expiry. Returns how many there were.
return reclaim(now_ms())
