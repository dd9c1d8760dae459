-- Window mode: add a batch of outcomes to the window hash and return its totals.
-- A count window keeps the outcomes themselves (the breaker's ring); a time window
-- counts per second of the script's clock, as the breaker's buckets do.
local function window_add(calls, fails, slow, codes)
  local c, f, s = 0, 0, 0
  if WINDOW == 'count' then
    -- the last WSIZE outcomes in order, one digit each: 1 = failed, 2 = slow (3: both)
    local w = redis.pcall('HGET', KEYS[3], 'o')
    if type(w) == 'table' and w.err then redis.call('DEL', KEYS[3]); w = false end
    if not w or string.find(w, '[^0-3]') then w = '' end
    w = w .. codes
    if #w > WSIZE then w = string.sub(w, -WSIZE) end
    for i = 1, #w do
      local code = string.byte(w, i) - 48
      if code % 2 == 1 then f = f + 1 end
      if code >= 2 then s = s + 1 end
    end
    c = #w
    redis.call('HSET', KEYS[3], 'o', w)
  else
    local sec = math.floor(now / 1000)
    local ok = redis.pcall('HINCRBY', KEYS[3], 'c:' .. sec, calls)
    if type(ok) == 'table' and ok.err then
      redis.call('DEL', KEYS[3])
      redis.call('HINCRBY', KEYS[3], 'c:' .. sec, calls)
    end
    redis.call('HINCRBY', KEYS[3], 'f:' .. sec, fails)
    redis.call('HINCRBY', KEYS[3], 's:' .. sec, slow)
    local raw = redis.call('HGETALL', KEYS[3])
    local old = {}
    for i = 1, #raw, 2 do
      local kind, at = string.match(raw[i], '^(%a):(%d+)$')
      local n = tonumber(raw[i + 1]) or 0
      if not at or tonumber(at) <= sec - WSIZE then
        old[#old + 1] = raw[i]
      elseif kind == 'c' then c = c + n
      elseif kind == 'f' then f = f + n
      else s = s + n end
    end
    if #old > 0 then redis.call('HDEL', KEYS[3], unpack(old)) end
  end
  redis.call('PEXPIRE', KEYS[3], KEY_TTL)
  return c, f, s
end
