-- Read the state, first applying ARGV[17]: 'none', 'operate' (an operator's state in
-- ARGV[18]) or 'open_if_closed' (a breaker that opened during an outage; ARGV[18] ms).
local mode = ARGV[17]
if mode == 'operate' then
  st.failures = 0
  st.reopens = 0
  redis.call('DEL', KEYS[3])
  enter(ARGV[18])
elseif mode == 'open_if_closed' and st.state == 'closed' then
  enter('open')
  st.open_until = now + tonumber(ARGV[18])
end
return finish(0, false)
