-- The start of every breaker script: its arguments, the breaker's state as loaded,
-- and enter() / finish(). KEYS: state hash, probes zset, window hash. ARGV[1..16]:
-- the breaker's configuration (store.breaker_args); ARGV[17]: empty, or the time to use
-- instead of Redis TIME (tests drive the transitions on a clock of their own); op
-- arguments from ARGV[18]. Times are milliseconds.
local CHANNEL, NAME, ORIGIN = ARGV[1], ARGV[2], ARGV[3]
local KEY_TTL = tonumber(ARGV[4])
local FAIL_T, SUCC_T = tonumber(ARGV[5]), tonumber(ARGV[6])
local OPEN_MS, MULT, MAX_OPEN = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local HALF_MAX, LEASE_MS = tonumber(ARGV[10]), tonumber(ARGV[11])
local WINDOW, WSIZE, MIN_CALLS = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local FAIL_RATE, SLOW_RATE = tonumber(ARGV[15]), tonumber(ARGV[16])
local STATES = {closed=true, open=true, half_open=true, forced_open=true,
                disabled=true, metrics_only=true}
local now = tonumber(ARGV[17])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local changed, dirty = false, false

local function load()
  local raw = redis.pcall('HGETALL', KEYS[1])
  if raw.err then return nil, 'corrupt' end
  if #raw == 0 then return nil, 'missing' end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  local st = {state = h.state, version = tonumber(h.version), failures = tonumber(h.failures),
              open_until = tonumber(h.open_until), reopens = tonumber(h.reopens),
              probe_ok = tonumber(h.probe_ok), last_failure = tonumber(h.last_failure) or 0}
  if not STATES[st.state] or not st.version or not st.failures or not st.open_until
     or not st.reopens or not st.probe_ok then
    return nil, 'corrupt'
  end
  return st, 'ok'
end

local st, flag = load()
if not st then
  st = {state='closed', version=0, failures=0, open_until=0, reopens=0, probe_ok=0,
        last_failure=0}
end

local function open_ms()
  local ms = OPEN_MS
  if st.reopens > 0 and MULT > 1 then ms = ms * MULT ^ st.reopens end
  if MAX_OPEN >= 0 then ms = math.min(ms, math.max(MAX_OPEN, OPEN_MS)) end
  if ms > 1e12 then ms = 1e12 end
  return math.ceil(ms)  -- never a probe before the breaker's own clock would admit one
end

local function enter(new)
  st.version = math.max(st.version + 1, now)
  st.probe_ok = 0
  redis.call('DEL', KEYS[2])
  if new == 'open' then
    st.open_until = now + open_ms()
  elseif new == 'closed' then
    st.failures = 0
    st.reopens = 0
    redis.call('DEL', KEYS[3])
  end
  st.state = new
  changed, dirty = true, true
end

local function retry_after()
  if st.state ~= 'open' then return 0 end
  return math.max(0, st.open_until - now) / 1000
end

local function failure_age()
  if st.last_failure <= 0 then return -1 end
  return math.max(0, now - st.last_failure) / 1000
end

local function finish(granted, announce)
  if dirty then
    if flag == 'corrupt' then redis.call('DEL', KEYS[1]) end
    if flag == 'missing' then flag = 'created' end
    if st.version == 0 then st.version = now end
    redis.call('HSET', KEYS[1], 'state', st.state, 'version', st.version,
               'failures', st.failures, 'open_until', st.open_until,
               'reopens', st.reopens, 'probe_ok', st.probe_ok,
               'last_failure', st.last_failure)
    if st.state == 'forced_open' or st.state == 'disabled' or st.state == 'metrics_only' then
      redis.call('PERSIST', KEYS[1])  -- an operator's decision lasts until the next one
    else
      local ttl = KEY_TTL
      if st.state == 'open' then ttl = math.max(ttl, st.open_until - now + KEY_TTL) end
      redis.call('PEXPIRE', KEYS[1], ttl)
    end
    if changed or announce then
      redis.call('PUBLISH', CHANNEL, cjson.encode({b=NAME, s=st.state, v=st.version,
                 f=st.failures, r=retry_after(), n=st.reopens, o=ORIGIN, l=failure_age()}))
    end
  end
  return {st.state, st.version, st.failures, string.format('%.3f', retry_after()),
          st.reopens, flag, granted, string.format('%.3f', failure_age())}
end
