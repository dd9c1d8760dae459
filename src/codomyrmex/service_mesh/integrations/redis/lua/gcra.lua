-- KEYS[1]: theoretical arrival time (TAT), microseconds of Redis TIME, as a decimal
-- ARGV[1]: microseconds per unit (1e6 / rate); ARGV[2]: tolerance (burst * ARGV[1]);
-- ARGV[3]: cost in units. Returns {1, "0"} (taken) or {0, wait in microseconds}.
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ok, stored = pcall(redis.call, 'GET', KEYS[1])
local tat = ok and stored and tonumber(stored) or now
if tat < now or tat > now + tolerance + interval * cost then tat = now end
local new_tat = tat + interval * cost
local wait = new_tat - now - tolerance
if wait > 0 then
  return {0, string.format('%.0f', math.ceil(wait))}
end
local ttl = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl)
return {1, '0'}
