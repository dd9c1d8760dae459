-- Window mode: add a batch of outcomes to the window hash and return its totals.
local function window_add(calls, fails, slow)
  local c, f, s = 0, 0, 0
  if WINDOW == 'count' then
    local w = redis.pcall('HMGET', KEYS[3], 'c', 'f', 's')
    if w.err then redis.call('DEL', KEYS[3]); w = {} end
    c = (tonumber(w[1]) or 0) + calls
    f = (tonumber(w[2]) or 0) + fails
    s = (tonumber(w[3]) or 0) + slow
    if c > WSIZE then
      local k = WSIZE / c
      c, f, s = WSIZE, f * k, s * k
    end
    redis.call('HSET', KEYS[3], 'c', c, 'f', f, 's', s)
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
