-- Remove one instance and publish 'down'. KEYS as register.lua; ARGV: channel, service, id.
local removed = redis.pcall('ZREM', KEYS[2], ARGV[3])
redis.pcall('HDEL', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], cjson.encode({op='down', s=ARGV[2], id=ARGV[3]}))
if type(removed) == 'table' then return 0 end
return removed
