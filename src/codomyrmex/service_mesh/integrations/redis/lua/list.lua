-- The live instances (id, JSON, ...), after removing and announcing expired ones.
-- KEYS as register.lua; ARGV: channel, service.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.pcall('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if expired.err then redis.call('DEL', KEYS[1], KEYS[2]); return {} end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(expired) do
    redis.pcall('HDEL', KEYS[1], id)
    redis.call('PUBLISH', ARGV[1], cjson.encode({op='down', s=ARGV[2], id=id}))
  end
end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
local out = {}
for _, id in ipairs(live) do
  local data = redis.pcall('HGET', KEYS[1], id)
  if type(data) == 'string' then
    out[#out + 1] = id
    out[#out + 1] = data
  end
end
return out
