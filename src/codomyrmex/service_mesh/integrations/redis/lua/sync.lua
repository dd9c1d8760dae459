-- Read the state, first applying ARGV[18]: 'none', 'operate' (an operator's state in
-- ARGV[19]) or 'open_if_closed' (a breaker that opened during an outage; ARGV[19] ms).
local mode = ARGV[18]
local OPERATED = {closed=true, forced_open=true, disabled=true, metrics_only=true}
if mode == 'operate' and OPERATED[ARGV[19]] then
  st.failures = 0
  st.reopens = 0
  redis.call('DEL', KEYS[3])
  enter(ARGV[19])
elseif mode == 'open_if_closed' and st.state == 'closed' then
  enter('open')
  st.open_until = now + tonumber(ARGV[19])
end
return finish(0, false)
