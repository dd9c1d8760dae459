-- A HALF_OPEN probe slot: OPEN past its time becomes HALF_OPEN; a lease while slots last.
local granted = 0
if st.state == 'open' and now >= st.open_until then enter('half_open') end
if st.state == 'half_open' then
  local gone = redis.pcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if type(gone) == 'table' and gone.err then redis.call('DEL', KEYS[2]) end
  if redis.call('ZCARD', KEYS[2]) < HALF_MAX then
    redis.call('ZADD', KEYS[2], now + LEASE_MS, ARGV[18])
    redis.call('PEXPIRE', KEYS[2], LEASE_MS + KEY_TTL)
    granted = 1
  end
end
return finish(granted, false)
