#!/usr/bin/env tarantool
-- The reference workload (tests/bench/reference/README.md) as a Tarantool
-- 2.6 server: memtx spaces, one stored procedure per event.
--
--   BENCH_PORT=3301 BENCH_DIR=/tmp/t BENCH_WAL_MODE=fsync|write|none \
--     tarantool tests/bench/peers/tarantool.lua
--
-- Procedures, called over IPROTO as guest (CALL, so a reply's data is
-- [ [names...] ]):
--   bench_event(customer, type, action, outcome) -> { name, ... } (at most 3)
--     action and outcome: strings for a response, "" or nil otherwise
--   bench_populate(customer, age, segment, region, plan, tenure, country,
--                  language, device, newsletter (boolean), score) -> true
-- Every event is on channel web. A change here must be made in
-- ../reference/rules/bench/10_reference.lua and redis_event.lua too.

local fiber = require('fiber')
local fio = require('fio')

local dir = os.getenv('BENCH_DIR') or fio.cwd()
local GiB = 1024 * 1024 * 1024

-- the port is opened only once the procedures exist (box.cfg below)
box.cfg {
  work_dir = dir,
  wal_dir = dir,
  memtx_dir = dir,
  wal_mode = os.getenv('BENCH_WAL_MODE') or 'fsync',
  -- measured: a populated customer takes about 320 bytes of arena, one
  -- after three events about 750; 4 GiB holds 10 M populated customers
  -- (BENCH_MEMTX_MEMORY, in bytes, for longer runs at that size)
  memtx_memory = tonumber(os.getenv('BENCH_MEMTX_MEMORY')) or 4 * GiB,
  checkpoint_interval = 3600,
  checkpoint_count = 2,
  log = fio.pathjoin(dir, 'tarantool.log'),
  log_level = 5,
  background = false,
  -- 16 clients x 16 requests in flight, and room above
  net_msg_max = 4096,
  readahead = 1024 * 1024,
}

box.once('bench_schema', function()
  local c = box.schema.space.create('customers', {
    format = { { name = 'id', type = 'string' }, { name = 'state', type = 'map' } },
  })
  c:create_index('primary', { type = 'hash', parts = { 'id' } })
  local m = box.schema.space.create('model', {
    format = {
      { name = 'key', type = 'string' },
      { name = 'accepted', type = 'unsigned' },
      { name = 'rejected', type = 'unsigned' },
      { name = 'ignored', type = 'unsigned' },
    },
  })
  m:create_index('primary', { type = 'hash', parts = { 'key' } })
  box.schema.user.grant('guest', 'read,write,execute', 'universe')
end)

local customers, model = box.space.customers, box.space.model
local CH = 'web'
local COOLDOWN_MS, MAX_IMPRESSIONS, STOP_AFTER_REJECTS = 3600000, 3, 2
local OUTCOME_FIELD = { accepted = 2, rejected = 3, ignored = 4 }

-- A table decoded from msgpack keeps a metatable saying whether it was an
-- array or a map; an empty map comes back as an empty array and would be
-- stored as [] again, losing the keys added since. Mark maps as maps.
local MAP = { __serialize = 'map' }
local function map(t) return setmetatable(t or {}, MAP) end

local function now_ms()
  return tonumber(fiber.time64() / 1000)
end

local NAMES, VALUES, MODEL_KEYS = {}, {}, {}
for i = 1, 20 do
  NAMES[i] = string.format('a%02d', i)
  VALUES[i] = 10 + 5 * i
  MODEL_KEYS[i] = NAMES[i] .. ':' .. CH
end
local ACTION_INDEX = {}
for i = 1, 20 do ACTION_INDEX[NAMES[i]] = i end

local function load_customer(id, now)
  local t = customers:get(id)
  if t == nil then
    return { id = id, attrs = map(), counters = map(), journeys = map(),
             actions = map(), created_at = now, updated_at = now }
  end
  local st = t[2]
  map(st.attrs); map(st.counters); map(st.journeys); map(st.actions)
  return st
end

-- journey "shop": a move to another stage is kept in its history
local function advance(st, stage, now)
  local js = st.journeys.shop
  if js == nil then
    js = map({ history = {} })
    st.journeys.shop = js
  end
  if js.stage ~= stage then
    js.stage, js.since = stage, now
    js.history[#js.history + 1] = { stage = stage, at = now }
  end
end

local function count(st, name)
  st.counters[name] = (st.counters[name] or 0) + 1
end

local function new_history()
  return { impressions = 0, accepted = 0, rejected = 0, ignored = 0 }
end

local function event(id, etype, action, outcome)
  local now = now_ms()
  local st = load_customer(id, now)
  local attrs, hist = st.attrs, st.actions
  if etype == 'response' then
    if ACTION_INDEX[action] == nil then
      box.error { reason = 'bad_request: a response needs data.action naming a declared action' }
    end
    if OUTCOME_FIELD[outcome] == nil then
      box.error { reason = 'bad_request: a response needs data.outcome = accepted, rejected or ignored' }
    end
    local h = hist[action]
    if h == nil then
      h = new_history()
      hist[action] = h
    end
    h[outcome] = (h[outcome] or 0) + 1
    local mk = action .. ':' .. CH
    local row = { mk, 0, 0, 0 }
    row[OUTCOME_FIELD[outcome]] = 1
    model:upsert(row, { { '+', OUTCOME_FIELD[outcome], 1 } })
  elseif etype == 'page_view' then
    count(st, 'views')
    local js = st.journeys.shop
    if js and js.stage == 'visitor' then advance(st, 'browsing', now) end
  elseif etype == 'add_to_cart' then
    count(st, 'carts')
    advance(st, 'cart', now)
  elseif etype == 'purchase' then
    count(st, 'purchases')
    advance(st, 'customer', now)
  end
  st.updated_at = now

  -- the decision: eligibility, contact policy, the model's propensity
  local lever = attrs.region == 'EU' and 1.2 or 1
  local cands = {}
  for i = 1, 20 do
    local name = NAMES[i]
    local ok
    if i % 3 == 1 then
      ok = attrs.age >= 18 + (i % 5) * 5
    elseif i % 3 == 2 then
      ok = attrs.segment ~= 'bronze'
    else
      ok = attrs.region ~= 'APAC'
    end
    local h = hist[name]
    if ok and h ~= nil then
      if h.impressions >= MAX_IMPRESSIONS or h.rejected >= STOP_AFTER_REJECTS
         or (h.last_shown ~= nil and now - h.last_shown < COOLDOWN_MS) then
        ok = false
      end
    end
    if ok then
      local acc, rej, ign = 0, 0, 0
      local m = model:get(MODEL_KEYS[i])
      if m ~= nil then acc, rej, ign = m[2], m[3], m[4] end
      local p = (1 + acc) / (2 + acc + rej + ign)
      cands[#cands + 1] = { name = name, score = p * VALUES[i] * lever }
    end
  end
  table.sort(cands, function(x, y)
    if x.score ~= y.score then return x.score > y.score end
    return x.name < y.name
  end)

  local out = {}
  for k = 1, math.min(3, #cands) do
    local name = cands[k].name
    local h = hist[name]
    if h == nil then
      h = new_history()
      hist[name] = h
    end
    h.impressions = h.impressions + 1
    h.last_shown = now
    out[k] = name
  end
  customers:replace { id, st }
  return out
end

local function populate(id, age, segment, region, plan, tenure, country,
                        language, device, newsletter, score)
  local now = now_ms()
  local st = load_customer(id, now)
  local a = st.attrs
  a.age, a.segment, a.region, a.plan, a.tenure = age, segment, region, plan, tenure
  a.country, a.language, a.device = country, language, device
  a.newsletter = newsletter == true or newsletter == 1
  a.score = score
  advance(st, 'visitor', now)
  st.updated_at = now
  customers:replace { id, st }
  return true
end

-- global, so that guest can CALL them; one transaction each
function bench_event(id, etype, action, outcome)
  return box.atomic(event, id, etype, action, outcome)
end

function bench_populate(...)
  return box.atomic(populate, ...)
end

box.cfg { listen = '127.0.0.1:' .. (os.getenv('BENCH_PORT') or '3301') }
