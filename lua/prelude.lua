-- choreo — the rule language, run once in each business's Lua state.
--
-- The host (lua/rules.c) loads this chunk with the real globals (only the
-- safe standard libraries are open) and passes a table of helpers. It
-- returns the API the host calls: the sandbox environment the business's
-- rule files run in, and the entry points for events and decisions.
--
-- Errors raised on an analyst's behalf use the level of the analyst's own
-- line, so the message reads "rules/shop/10_x.lua:12: ...".

local H = ...
local getinfo, array_mt = H.getinfo, H.array_mt

local type, pairs, ipairs, next, error, tostring, select =
      type, pairs, ipairs, next, error, tostring, select
local setmetatable, getmetatable, rawget, rawset, pcall =
      setmetatable, getmetatable, rawget, rawset, pcall
local sfmt, sfind, smatch, ssub = string.format, string.find, string.match, string.sub
local tsort, tconcat = table.sort, table.concat
local mfloor, mhuge = math.floor, math.huge

local function arr(t)
  return setmetatable(t or {}, array_mt)
end

-- The business's declarations, filled while its files load.
local B = {
  params = {},
  journeys = {}, jorder = {},
  actions = {}, aorder = {},
  cases = {},
  handlers = {},      -- { {type=, fn=} ... } in file order
  by_type = {},       -- cache: type -> list of functions
}

------------------------------------------------------------------------
-- Helpers for declaration checks
------------------------------------------------------------------------

-- fail raises msg at the analyst's line that made the declaration: the
-- innermost frame whose source is not this prelude.
local prelude_src
local function fail(msg)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info then error(msg, 0) end
    if info.source ~= prelude_src and info.what ~= "C" then
      error(msg, level)
    end
    level = level + 1
  end
end
prelude_src = getinfo(1, "S").source

local function tname(v)
  local t = type(v)
  if t == "number" then
    return math.type(v) == "integer" and "integer" or "number"
  end
  return t
end

local DUR = { s = 1000, m = 60000, h = 3600000, d = 86400000, w = 604800000 }

-- duration turns "30s", "15m", "48h", "3d", "2w" into milliseconds.
local function duration(v, what)
  if type(v) == "string" then
    local n, u = smatch(v, "^%s*(%d+%.?%d*)%s*([smhdw])%s*$")
    if n then return mfloor(tonumber(n) * DUR[u]) end
  end
  fail(sfmt("%s must be a duration such as \"30s\", \"15m\", \"48h\", \"3d\" or \"2w\", got %s",
            what, type(v) == "string" and sfmt("%q", v) or tname(v)))
end

local function is_list_of_strings(v)
  if type(v) ~= "table" then return false end
  local n = 0
  for k, x in pairs(v) do
    if math.type(k) ~= "integer" or type(x) ~= "string" then return false end
    n = n + 1
  end
  return n == #v
end

-- check validates spec against a schema { field = checker } where a checker
-- is a type name ("number", "string", "function", "boolean", "table",
-- "strings", "duration") or a function(v, what) returning a message.
local function check(kind, name, spec, schema)
  if type(spec) ~= "table" then
    fail(sfmt("%s '%s': expected a table of fields, got %s", kind, name, tname(spec)))
  end
  for k, v in pairs(spec) do
    local want = schema[k]
    local what = sfmt("%s '%s': %s", kind, name, tostring(k))
    if want == nil then
      local known = {}
      for f in pairs(schema) do known[#known + 1] = f end
      tsort(known)
      fail(sfmt("%s '%s': unknown field '%s' (known fields: %s)", kind, name,
                tostring(k), tconcat(known, ", ")))
    elseif want == "strings" then
      if not is_list_of_strings(v) then
        fail(sfmt("%s must be a list of strings, got %s", what, tname(v)))
      end
    elseif want == "duration" then
      duration(v, what)
    elseif type(want) == "function" then
      local m = want(v, what)
      if m then fail(m) end
    elseif want == "number" then
      if type(v) ~= "number" then
        fail(sfmt("%s must be a number, got %s", what, tname(v)))
      end
    elseif type(v) ~= want then
      fail(sfmt("%s must be a %s, got %s", what, want, tname(v)))
    end
  end
end

local function check_name(kind, name)
  if type(name) ~= "string" or name == "" then
    fail(sfmt("%s needs a name: %s \"name\" { ... }", kind, kind))
  end
end

------------------------------------------------------------------------
-- Declarations
------------------------------------------------------------------------

local D = {}

-- params is both the declaration, params { name = value }, and the table
-- the declared values are read from later, as in params.premium_price.
D.params = setmetatable({}, {
  __call = function(_, t)
    if type(t) ~= "table" then
      fail(sfmt("params: expected a table, got %s", tname(t)))
    end
    for k, v in pairs(t) do
      if type(k) ~= "string" then fail("params: every name must be a string") end
      B.params[k] = v
    end
  end,
  __index = B.params,
  __newindex = function() fail("params are declared with params { name = value }") end,
  __metatable = false,
})

local JOURNEY = {
  stages = "strings", goal = "string", inactive_after = "duration",
  description = "string",
}

function D.journey(name)
  check_name("journey", name)
  return function(spec)
    check("journey", name, spec, JOURNEY)
    if spec.stages == nil or #spec.stages == 0 then
      fail(sfmt("journey '%s': stages must list at least one stage", name))
    end
    local set = {}
    for i, s in ipairs(spec.stages) do
      if set[s] then fail(sfmt("journey '%s': stage '%s' is listed twice", name, s)) end
      set[s] = i
    end
    if spec.goal ~= nil and not set[spec.goal] then
      fail(sfmt("journey '%s': goal '%s' is not one of its stages", name, spec.goal))
    end
    if B.journeys[name] == nil then B.jorder[#B.jorder + 1] = name end
    B.journeys[name] = {
      name = name, stages = spec.stages, stage_set = set, goal = spec.goal,
      inactive_after = spec.inactive_after and duration(spec.inactive_after),
      description = spec.description,
    }
  end
end

local LIMITS = {
  max_impressions = "number", per_day = "number", cooldown = "duration",
  stop_after_rejects = "number",
}

local function prob(v, what)
  if type(v) ~= "number" or v < 0 or v > 1 then
    return sfmt("%s must be a number between 0 and 1, got %s", what,
                type(v) == "number" and tostring(v) or tname(v))
  end
end

local ACTION = {
  group = "string", channels = "strings", value = "number", weight = "number",
  eligible = "function", propensity = "function", prior = prob,
  explore = "boolean", payload = "table", description = "string",
  limits = function(v, what)
    if type(v) ~= "table" then
      return sfmt("%s must be a table, got %s", what, tname(v))
    end
    for k, x in pairs(v) do
      local want = LIMITS[k]
      if want == nil then
        return sfmt("%s: unknown limit '%s' (known: cooldown, max_impressions, per_day, stop_after_rejects)",
                    what, tostring(k))
      elseif want == "duration" then
        duration(x, what .. "." .. k)
      elseif type(x) ~= "number" or x < 0 then
        return sfmt("%s.%s must be a non-negative number, got %s", what, k, tname(x))
      end
    end
  end,
}

function D.action(name)
  check_name("action", name)
  return function(spec)
    check("action", name, spec, ACTION)
    if B.actions[name] == nil then B.aorder[#B.aorder + 1] = name end
    local a = { name = name }
    for k, v in pairs(spec) do a[k] = v end
    a.value = a.value or 0
    a.weight = a.weight or 1
    a.prior = a.prior or 0.5
    if a.channels then
      a.channel_set = {}
      for _, ch in ipairs(a.channels) do a.channel_set[ch] = true end
    end
    if a.limits and a.limits.cooldown then
      a.cooldown_ms = duration(a.limits.cooldown)
    end
    B.actions[name] = a
  end
end

local CASE = { sla = "duration", description = "string" }

function D.case(name)
  check_name("case", name)
  return function(spec)
    check("case", name, spec, CASE)
    B.cases[name] = { name = name, sla = spec.sla and duration(spec.sla) }
  end
end

function D.on(etype, fn)
  if type(etype) ~= "string" or etype == "" then
    fail(sfmt("on: the event type must be a string, got %s", tname(etype)))
  end
  if type(fn) ~= "function" then
    fail(sfmt("on(\"%s\", ...): the handler must be a function, got %s", etype, tname(fn)))
  end
  B.handlers[#B.handlers + 1] = { type = etype, fn = fn }
  B.by_type = {}
end

------------------------------------------------------------------------
-- The customer object
------------------------------------------------------------------------

local C = {}
C.__index = C
C.__name = "customer"

local function journey_of(name)
  local j = B.journeys[name]
  if not j then
    fail(sfmt("unknown journey '%s'", tostring(name)))
  end
  return j
end

function C:stage(jname)
  journey_of(jname)
  local js = self._s.journeys[jname]
  return js and js.stage
end

function C:advance(jname, stage)
  local j = journey_of(jname)
  if not j.stage_set[stage] then
    fail(sfmt("journey '%s' has no stage '%s'", jname, tostring(stage)))
  end
  local js = self._s.journeys[jname]
  if not js then
    js = { history = arr() }
    self._s.journeys[jname] = js
  end
  if js.stage ~= stage then
    js.stage, js.since = stage, self.now
    js.history[#js.history + 1] = { stage = stage, at = self.now }
  end
  return stage
end

function C:count(name, n)
  if type(name) ~= "string" then
    fail(sfmt("c:count: the counter name must be a string, got %s", tname(name)))
  end
  n = n or 1
  if type(n) ~= "number" then
    fail(sfmt("c:count('%s', n): n must be a number, got %s", name, tname(n)))
  end
  local counters = self._s.counters
  counters[name] = (counters[name] or 0) + n
  return counters[name]
end

function C:emit(name, data)
  if type(name) ~= "string" or name == "" then
    fail(sfmt("c:emit: the name must be a string, got %s", tname(name)))
  end
  if data ~= nil and type(data) ~= "table" then
    fail(sfmt("c:emit('%s', data): data must be a table, got %s", name, tname(data)))
  end
  local e = self._emitted
  e[#e + 1] = { name = name, data = data or {} }
end

function C:history(action)
  return self._s.actions[action]
end

function C:open_case(name, data)
  local k = B.cases[name]
  if not k then fail(sfmt("unknown case '%s'", tostring(name))) end
  local cs = { status = "open", opened_at = self.now, data = data }
  if k.sla then cs.due_at = self.now + k.sla end
  self._s.cases[name] = cs
end

function C:close_case(name, outcome)
  local cs = self._s.cases[name]
  if not cs or cs.status ~= "open" then
    fail(sfmt("case '%s' is not open for this customer", tostring(name)))
  end
  cs.status, cs.outcome, cs.closed_at = "closed", outcome, self.now
end

local function new_state(id, now)
  return {
    id = id, attrs = {}, counters = {}, journeys = {}, cases = {},
    actions = {}, created_at = now, updated_at = now,
  }
end

local function new_customer(st, ctx, now)
  return setmetatable({
    id = st.id, attrs = st.attrs, context = ctx, params = B.params, now = now,
    _s = st, _emitted = arr(),
  }, C)
end

local function context_of(req, st)
  local a = st.attrs
  return {
    region = req.region or a.region,
    channel = req.channel or a.channel,
    product = req.product or a.product,
  }
end

------------------------------------------------------------------------
-- Next best action
------------------------------------------------------------------------

local function clamp01(p)
  if p ~= p then return 0 end
  if p < 0 then return 0 elseif p > 1 then return 1 end
  return p
end

local function by_score(x, y)
  if x.score ~= y.score then return x.score > y.score end
  return x.name < y.name
end

local function nba(c, channel, limit, record)
  local cands = {}
  local hist = c._s.actions
  for _, name in ipairs(B.aorder) do
    local a = B.actions[name]
    local ok = true
    if channel and a.channel_set and not a.channel_set[channel] then ok = false end
    if ok and a.eligible and not a.eligible(c) then ok = false end
    if ok then
      local p
      if a.propensity then
        p = a.propensity(c)
        if type(p) ~= "number" then
          fail(sfmt("action '%s': propensity(c) must return a number, got %s", name, tname(p)))
        end
        p = clamp01(p)
      else
        local h = hist[name]
        local acc = h and h.accepted or 0
        local rej = (h and h.rejected or 0) + (h and h.ignored or 0)
        p = (2 * a.prior + acc) / (2 + acc + rej)
      end
      cands[#cands + 1] = {
        name = name, score = p * a.value * a.weight, value = a.value,
        propensity = p, group = a.group,
        channel = channel or (a.channels and a.channels[1]),
        payload = a.payload,
      }
    end
  end
  tsort(cands, by_score)
  local out = arr()
  for i = 1, math.min(limit, #cands) do
    out[i] = cands[i]
    if record then
      local h = hist[cands[i].name]
      if not h then
        h = { impressions = 0, accepted = 0, rejected = 0, ignored = 0 }
        hist[cands[i].name] = h
      end
      h.impressions = h.impressions + 1
      h.last_shown = c.now
    end
  end
  return out
end

------------------------------------------------------------------------
-- Entry points (called by the host)
------------------------------------------------------------------------

local function handlers_for(etype)
  local list = B.by_type[etype]
  if not list then
    list = {}
    for _, h in ipairs(B.handlers) do
      if h.type == etype or h.type == "*" then list[#list + 1] = h.fn end
    end
    B.by_type[etype] = list
  end
  return list
end

local function journeys_reply(st)
  local out = {}
  for name, js in pairs(st.journeys) do
    out[name] = { stage = js.stage, since = js.since }
  end
  return out
end

local API = {}

-- event runs the handlers for req.type and, when asked, decides.
-- st is the stored state (nil for a new customer). Returns the new state
-- and the reply table.
function API.event(st, req, now, version)
  st = st or new_state(req.customer, now)
  local ctx = context_of(req, st)
  local c = new_customer(st, ctx, now)
  local ev = {
    type = req.type, id = req.id, ts = req.ts or now, data = req.data or {},
    channel = req.channel, region = req.region, product = req.product,
  }
  local list = handlers_for(req.type)
  for i = 1, #list do
    list[i](c, ev)
  end
  st.updated_at = now
  local reply = { ok = true, rules = version, journeys = journeys_reply(st) }
  if req.decide ~= false then
    reply.actions = nba(c, ctx.channel, req.limit or 3, true)
  end
  if #c._emitted > 0 then reply.emitted = c._emitted end
  return st, reply
end

-- decide ranks the next best actions without an event.
function API.decide(st, req, now, version)
  st = st or new_state(req.customer, now)
  local ctx = context_of(req, st)
  local c = new_customer(st, ctx, now)
  local record = req.record ~= false
  local reply = {
    ok = true, rules = version, journeys = journeys_reply(st),
    actions = nba(c, ctx.channel, req.limit or 3, record),
  }
  if record then
    st.updated_at = now
    return st, reply
  end
  return nil, reply -- nothing recorded: the stored state stays as it is
end

------------------------------------------------------------------------
-- The sandbox: the environment the business's rule files run in
------------------------------------------------------------------------

local function copy(t, except)
  local out = {}
  for k, v in pairs(t) do
    if not (except and except[k]) then out[k] = v end
  end
  return out
end

local real_load, pack, unpack = load, table.pack, table.unpack

local function build_env()
  local env = {}
  for _, k in ipairs { "assert", "error", "ipairs", "next", "pairs", "pcall",
                       "rawequal", "rawget", "rawlen", "rawset", "select",
                       "tonumber", "tostring", "type", "getmetatable" } do
    env[k] = _G[k]
  end
  env._VERSION = _VERSION
  env.string = copy(string, { dump = true })
  env.table = copy(table)
  env.math = copy(math)
  env.utf8 = copy(utf8)
  env.os = { time = os.time, date = os.date, clock = os.clock }
  env.print = H.log

  -- A finalizer runs with hooks off, out of the budget's reach.
  function env.setmetatable(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("setmetatable: __gc finalizers are not allowed in rules", 2)
    end
    return setmetatable(t, mt)
  end

  -- A message handler runs with hooks off when the budget's error is
  -- raised; here it runs after pcall returns, under the budget.
  function env.xpcall(f, handler, ...)
    if type(handler) ~= "function" then
      error("xpcall: the message handler must be a function", 2)
    end
    local r = pack(pcall(f, ...))
    if r[1] then return unpack(r, 1, r.n) end
    return false, handler(r[2])
  end

  -- Text only: a binary chunk can crash the interpreter.
  function env.load(chunk, name, mode, e)
    if mode ~= nil and mode ~= "t" then
      error("load: rules may load text chunks only (mode \"t\")", 2)
    end
    return real_load(chunk, name, "t", e or env)
  end

  for k, v in pairs(D) do env[k] = v end
  env._G = env
  return setmetatable(env, {
    __index = function(_, k)
      error(sfmt("undefined global '%s'", tostring(k)), 2)
    end,
    __metatable = false,
  })
end

API.env = build_env()
do
  -- String methods go through the rules' own copy of the library, and
  -- rules cannot reach the metatable itself.
  local smt = getmetatable("")
  smt.__index = API.env.string
  smt.__metatable = false
end

API.duration = duration
API.B = B

return API
