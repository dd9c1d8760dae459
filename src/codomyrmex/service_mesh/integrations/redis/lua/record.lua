-- Outcomes. ARGV[18] 'closed': a batch seen while CLOSED (ARGV[19..23]: reset the count
-- first, failures, calls, slow calls, a count window's outcome digits in order);
-- 'probe': one HALF_OPEN probe (ARGV[19..22]: lease, its version, 'ok' or 'fail', failed);
-- an empty lease is a manual record (record_success, record_failure).
local kind = ARGV[18]
local announce = false
if kind == 'closed' then
  local reset, nfail = tonumber(ARGV[19]), tonumber(ARGV[20])
  local ncalls, nslow, codes = tonumber(ARGV[21]), tonumber(ARGV[22]), ARGV[23] or ''
  if st.state == 'closed' then
    if nfail > 0 then st.last_failure = now; dirty = true end
    if WINDOW == 'none' then
      local before = st.failures
      if reset == 1 then st.failures = 0 end
      st.failures = st.failures + nfail
      if st.failures ~= before then dirty = true end
      if st.failures >= FAIL_T then
        enter('open')
      elseif before == 0 and st.failures > 0 then
        announce = true
      end
    elseif ncalls > 0 then
      local c, f, s = window_add(ncalls, nfail, nslow, codes)
      if c >= MIN_CALLS and ((FAIL_RATE >= 0 and 100 * f / c >= FAIL_RATE)
                             or (SLOW_RATE >= 0 and 100 * s / c >= SLOW_RATE)) then
        enter('open')
      end
    end
  end
else
  local lease, lease_version, outcome = ARGV[19], tonumber(ARGV[20]), ARGV[21]
  if lease ~= '' then
    redis.pcall('ZREM', KEYS[2], lease)
  elseif st.state == 'open' and now >= st.open_until and st.version == lease_version then
    -- a manual record (no lease) once the open period is over: HALF_OPEN judges it, as
    -- the breaker's lazy OPEN -> HALF_OPEN does
    enter('half_open')
    lease_version = st.version
  end
  if st.state == 'half_open' and st.version == lease_version then
    if ARGV[22] == '1' then st.last_failure = now; dirty = true end
    if outcome == 'ok' then
      st.probe_ok = st.probe_ok + 1
      dirty = true
      if st.probe_ok >= SUCC_T then enter('closed') end
    else
      st.reopens = st.reopens + 1
      enter('open')
    end
  end
end
return finish(0, announce)
