-- Register or refresh one instance. KEYS: instances hash, deadlines zset.
-- ARGV: channel, service, id, JSON, ttl (ms). Publishes 'up' when new or changed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel, service, id, data, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local old = redis.pcall('HGET', KEYS[1], id)
if type(old) == 'table' and old.err then redis.call('DEL', KEYS[1]); old = false end
local deadline = redis.pcall('ZSCORE', KEYS[2], id)
if type(deadline) == 'table' and deadline.err then redis.call('DEL', KEYS[2]); deadline = false end
local alive = deadline and tonumber(deadline) > now
redis.call('HSET', KEYS[1], id, data)
redis.call('ZADD', KEYS[2], now + ttl, id)
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
if not alive or old ~= data then
  redis.call('PUBLISH', channel, cjson.encode({op='up', s=service, id=id, inst=data}))
  return 1
end
return 0
