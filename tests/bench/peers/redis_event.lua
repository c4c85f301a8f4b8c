-- The reference workload (tests/bench/reference/README.md) as a Redis 7
-- Lua script: one event of one customer, then the next best actions.
--
--   EVALSHA sha 1 c<k> <type> <action or ""> <outcome or "">
--
-- The customer's whole state is the key KEYS[1], one msgpack blob; the
-- adaptive model is the hash `model` (fields `aNN:web:accepted` ...),
-- touched without being declared (fine outside cluster mode). Every event
-- is on channel web. Replies the names of the chosen actions (at most 3).
-- A change here must be made in ../reference/rules/bench/10_reference.lua
-- and tarantool.lua too.

local key, etype = KEYS[1], ARGV[1]
local raction, routcome = ARGV[2], ARGV[3]
local CH = "web"
local COOLDOWN_MS, MAX_IMPRESSIONS, STOP_AFTER_REJECTS = 3600000, 3, 2

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- the customer, or a new empty one (as choreo does)
local blob = redis.call("GET", key)
local st
if blob then
  st = cmsgpack.unpack(blob)
else
  st = { id = key, attrs = {}, counters = {}, journeys = {},
         actions = {}, created_at = now, updated_at = now }
end
local attrs, counters, hist = st.attrs, st.counters, st.actions

local function count(name)
  counters[name] = (counters[name] or 0) + 1
end

-- journey "shop": a move to another stage is kept in its history
local function advance(stage)
  local js = st.journeys.shop
  if not js then
    js = { history = {} }
    st.journeys.shop = js
  end
  if js.stage ~= stage then
    js.stage, js.since = stage, now
    js.history[#js.history + 1] = { stage = stage, at = now }
  end
end

-- the model changes are written at the end, with the state, so that an
-- error on the way (an unknown customer has no age) changes nothing
local model_delta

if etype == "response" then
  local n = tonumber(string.match(raction, "^a(%d%d)$"))
  if not n or n < 1 or n > 20 then
    return redis.error_reply("bad_request: a response needs data.action naming a declared action")
  end
  if routcome ~= "accepted" and routcome ~= "rejected" and routcome ~= "ignored" then
    return redis.error_reply("bad_request: a response needs data.outcome = accepted, rejected or ignored")
  end
  local h = hist[raction]
  if not h then
    h = { impressions = 0, accepted = 0, rejected = 0, ignored = 0 }
    hist[raction] = h
  end
  h[routcome] = (h[routcome] or 0) + 1
  model_delta = raction .. ":" .. CH .. ":" .. routcome
elseif etype == "page_view" then
  count("views")
  if st.journeys.shop and st.journeys.shop.stage == "visitor" then advance("browsing") end
elseif etype == "add_to_cart" then
  count("carts")
  advance("cart")
elseif etype == "purchase" then
  count("purchases")
  advance("customer")
end
st.updated_at = now

-- the decision: eligibility, contact policy, then the model's propensity
local cands, fields = {}, {}
for i = 1, 20 do
  local name = string.format("a%02d", i)
  local ok
  if i % 3 == 1 then
    ok = attrs.age >= 18 + (i % 5) * 5
  elseif i % 3 == 2 then
    ok = attrs.segment ~= "bronze"
  else
    ok = attrs.region ~= "APAC"
  end
  local h = hist[name]
  if ok and h then
    if h.impressions >= MAX_IMPRESSIONS or h.rejected >= STOP_AFTER_REJECTS
       or (h.last_shown and now - h.last_shown < COOLDOWN_MS) then
      ok = false
    end
  end
  if ok then
    cands[#cands + 1] = { name = name, value = 10 + 5 * i }
    local p = name .. ":" .. CH .. ":"
    fields[#fields + 1] = p .. "accepted"
    fields[#fields + 1] = p .. "rejected"
    fields[#fields + 1] = p .. "ignored"
  end
end

if #cands > 0 then
  local m = redis.call("HMGET", "model", unpack(fields))
  local lever = attrs.region == "EU" and 1.2 or 1
  for k, a in ipairs(cands) do
    local j = 3 * (k - 1)
    local acc = tonumber(m[j + 1]) or 0
    local rej = tonumber(m[j + 2]) or 0
    local ign = tonumber(m[j + 3]) or 0
    if model_delta then
      local f = fields[j + 1]
      if model_delta == f then acc = acc + 1
      elseif model_delta == fields[j + 2] then rej = rej + 1
      elseif model_delta == fields[j + 3] then ign = ign + 1 end
    end
    local p = (1 + acc) / (2 + acc + rej + ign)
    a.score = p * a.value * lever
  end
  table.sort(cands, function(x, y)
    if x.score ~= y.score then return x.score > y.score end
    return x.name < y.name
  end)
end

local out = {}
for k = 1, math.min(3, #cands) do
  local name = cands[k].name
  local h = hist[name]
  if not h then
    h = { impressions = 0, accepted = 0, rejected = 0, ignored = 0 }
    hist[name] = h
  end
  h.impressions = h.impressions + 1
  h.last_shown = now
  out[k] = name
end

redis.call("SET", key, cmsgpack.pack(st))
if model_delta then redis.call("HINCRBY", "model", model_delta, 1) end
return out
