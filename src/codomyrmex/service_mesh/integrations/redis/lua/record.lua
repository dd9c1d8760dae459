-- Outcomes: ARGV[17] 'closed' (a batch seen while CLOSED) or 'probe' (one HALF_OPEN probe).
local kind = ARGV[17]
local announce = false
if kind == 'closed' then
  local reset, nfail = tonumber(ARGV[18]), tonumber(ARGV[19])
  local ncalls, nslow = tonumber(ARGV[20]), tonumber(ARGV[21])
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
      local c, f, s = window_add(ncalls, nfail, nslow)
      if c >= MIN_CALLS and ((FAIL_RATE >= 0 and 100 * f / c >= FAIL_RATE)
                             or (SLOW_RATE >= 0 and 100 * s / c >= SLOW_RATE)) then
        enter('open')
      end
    end
  end
else
  local lease, lease_version, outcome = ARGV[18], tonumber(ARGV[19]), ARGV[20]
  if lease ~= '' then redis.pcall('ZREM', KEYS[2], lease) end
  if st.state == 'half_open' and st.version == lease_version then
    if ARGV[21] == '1' then st.last_failure = now; dirty = true end
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
