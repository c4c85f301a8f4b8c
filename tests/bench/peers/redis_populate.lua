-- The reference workload's profile event (tests/bench/reference/README.md)
-- as a Redis 7 Lua script: the ten attributes, then stage visitor of
-- journey shop. No decision.
--
--   EVALSHA sha 1 c<i> age segment region plan tenure country language
--           device newsletter(1|0) score
--
-- The profile handler of ../reference/rules/bench/10_reference.lua; the
-- state has the layout redis_event.lua reads.

local key = KEYS[1]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local blob = redis.call("GET", key)
local st
if blob then
  st = cmsgpack.unpack(blob)
else
  st = { id = key, attrs = {}, counters = {}, journeys = {},
         actions = {}, created_at = now, updated_at = now }
end

local a = st.attrs
a.age = tonumber(ARGV[1])
a.segment = ARGV[2]
a.region = ARGV[3]
a.plan = ARGV[4]
a.tenure = tonumber(ARGV[5])
a.country = ARGV[6]
a.language = ARGV[7]
a.device = ARGV[8]
a.newsletter = ARGV[9] == "1" or ARGV[9] == "true"
a.score = tonumber(ARGV[10])

local js = st.journeys.shop
if not js then
  js = { history = {} }
  st.journeys.shop = js
end
if js.stage ~= "visitor" then
  js.stage, js.since = "visitor", now
  js.history[#js.history + 1] = { stage = "visitor", at = now }
end
st.updated_at = now

redis.call("SET", key, cmsgpack.pack(st))
return 1
