-- Release every reservation past its expiry. Returns their ids.
return reclaim(now_ms())
