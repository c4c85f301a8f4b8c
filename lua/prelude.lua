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
local storable = H.storable -- nil, or why a value cannot be stored
local is_text = H.is_text   -- a string of valid UTF-8 without NUL bytes
local state_problem = H.state_problem -- nil, or what a handler got wrong
local debug_getmetatable = H.getmetatable

local type, pairs, ipairs, next, error, tostring, select =
      type, pairs, ipairs, next, error, tostring, select
local setmetatable, getmetatable, rawget, rawset, pcall =
      setmetatable, getmetatable, rawget, rawset, pcall
local sfmt, sfind, smatch, ssub = string.format, string.find, string.match, string.sub
local tsort, tconcat, tmove = table.sort, table.concat, table.move
local mfloor, mhuge = math.floor, math.huge

local function arr(t)
  return setmetatable(t or {}, array_mt)
end

-- The business's declarations, filled while its files load. The base layer
-- holds the declarations made outside any variation; each variation holds
-- its own overrides, applied per request by resolve().
local B = {
  params = {},
  journeys = {}, jorder = {},
  action_specs = {}, aorder = {},  -- raw specs, merged per circumstance
  all_actions = {},                -- every action name, base or variation
  cases = {},
  levers = {},
  policy = nil,                    -- contact_policy { ... }
  max_per_group = nil,
  arbitrate = nil,
  handlers = {},                   -- { {type=, fn=} ... } in file order
  by_type = {},                    -- cache: type -> list of functions
  variations = {},                 -- in declaration order
  views = {}, nviews = 0,          -- resolved views by circumstance
  where = {},                      -- "kind:name" -> "file:line" declared
}

local MAX_VIEWS = 4096

------------------------------------------------------------------------
-- Helpers for declaration checks
------------------------------------------------------------------------

-- where_of returns "file:line" of the line where fn was written.
local function where_of(fn)
  local info = getinfo(fn, "S")
  local src = ssub(info.source, 1, 1) == "@" and ssub(info.source, 2) or info.short_src
  return src .. ":" .. info.linedefined
end

-- fallback says where an error goes when no frame of the analyst's is on
-- the stack: while a handler runs, the handler (a tail call replaced its
-- frame); while a view is resolved, "file:line" of the declaration or
-- variation that made it.
local fallback = nil

-- fail raises msg at the analyst's line that made the declaration: the
-- innermost frame whose source is not this prelude.
local prelude_src
local function fail(msg)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info then
      local at = fallback
      if type(at) == "function" then at = where_of(at) end
      error(at and (at .. ": " .. msg) or msg, 0)
    end
    if info.source ~= prelude_src and info.what ~= "C" then
      error(msg, level)
    end
    level = level + 1
  end
end
prelude_src = getinfo(1, "S").source

-- here returns "file:line" of the analyst's line making a declaration.
local function here()
  local level = 2
  while true do
    local info = getinfo(level, "Sl")
    if not info then return "?" end
    if info.source ~= prelude_src and info.what ~= "C" then
      return ssub(info.source, 2) .. ":" .. info.currentline
    end
    level = level + 1
  end
end

-- An error the host turns into a reply code other than rule_error.
local CODED = {}
local function coded(code, msg)
  error(setmetatable({ code = code, message = msg }, CODED), 0)
end

local function tname(v)
  local t = type(v)
  if t == "number" then
    return math.type(v) == "integer" and "integer" or "number"
  end
  return t
end

-- finite: a number that is neither NaN nor infinite.
local function finite(v)
  return type(v) == "number" and v == v and v > -mhuge and v < mhuge
end

-- got names a value in a message: a number as itself (NaN and the
-- infinities in words), anything else by its type.
local function got(v)
  if type(v) ~= "number" then return tname(v) end
  if v ~= v then return "NaN" end
  if v == mhuge then return "infinity" end
  if v == -mhuge then return "-infinity" end
  return tostring(v)
end

-- nonfinite returns the path and the value of the first NaN or infinite
-- number in v, a number or a table of them.
local function nonfinite(v, path, seen)
  if type(v) == "number" then
    if not finite(v) then return path, v end
  elseif type(v) == "table" then
    seen = seen or {}
    if seen[v] then return nil end
    seen[v] = true
    for k, x in next, v do
      local p, bad = nonfinite(x, path .. "." .. tostring(k), seen)
      if p then return p, bad end
    end
  end
  return nil
end

local DUR = { s = 1000, m = 60000, h = 3600000, d = 86400000, w = 604800000 }
local DAY = DUR.d
local MAX_DURATION = 36500 * DAY -- 100 years

-- duration turns "30s", "15m", "48h", "3d", "2w" into milliseconds.
local function duration(v, what)
  if type(v) == "string" then
    local n, u = smatch(v, "^%s*(%d+%.?%d*)%s*([smhdw])%s*$")
    if n then
      local ms = mfloor(tonumber(n) * DUR[u])
      if ms <= MAX_DURATION then return ms end
      fail(sfmt("%s must be a duration of at most 100 years, got %q", what, v))
    end
  end
  fail(sfmt("%s must be a duration such as \"30s\", \"15m\", \"48h\", \"3d\" or \"2w\", got %s",
            what, type(v) == "string" and sfmt("%q", v) or tname(v)))
end

-- Names end up in the store's keys, in analytics counters and pub topics,
-- joined with NUL bytes, and in replies: each must be text, valid UTF-8
-- without NUL, so that every key reads back one way only.
local NOT_TEXT = "must be valid UTF-8 without NUL bytes"
local function text_or_fail(v, what)
  if not is_text(v) then fail(sfmt("%s %s, got %q", what, NOT_TEXT, v)) end
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

-- REF is the metatable of a params reference (see params below): a
-- scalar to merge, like the value it stands for.
local REF = {}
local function is_ref(v)
  return type(v) == "table" and rawequal(debug_getmetatable(v), REF)
end

-- is_list: an array-like table (lists are replaced by a variation, not
-- merged).
local function is_list(t)
  if type(t) ~= "table" then return false end
  if getmetatable(t) == array_mt then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

-- merge returns base with over merged in, field by field: tables merge
-- recursively; lists, functions and scalars replace.
local function merge(base, over)
  local out = {}
  if base then for k, v in pairs(base) do out[k] = v end end
  for k, v in pairs(over) do
    local b = out[k]
    if type(v) == "table" and not is_ref(v) and not is_list(v)
       and type(b) == "table" and not is_ref(b) and not is_list(b) then
      out[k] = merge(b, v)
    else
      out[k] = v
    end
  end
  return out
end

-- check validates spec against a schema { field = checker } where a checker
-- is a type name ("number", "string", "function", "boolean", "table",
-- "strings", "duration"), "name" or "names" (strings that are text, see
-- text_or_fail) or a function(v, what) returning a message.
local check_params -- the params a declaration's references are checked with
local subst        -- replaces params references (defined with params below)

local function check(kind, name, spec, schema)
  if type(spec) ~= "table" then
    fail(sfmt("%s '%s': expected a table of fields, got %s", kind, name, tname(spec)))
  end
  spec = subst(spec, check_params())
  for k, v in pairs(spec) do
    local want = schema[k]
    local what = sfmt("%s '%s': %s", kind, name, tostring(k))
    if want == nil then
      local known = {}
      for f in pairs(schema) do known[#known + 1] = f end
      tsort(known)
      fail(sfmt("%s '%s': unknown field '%s' (known fields: %s)", kind, name,
                tostring(k), tconcat(known, ", ")))
    elseif want == "strings" or want == "names" then
      if not is_list_of_strings(v) then
        fail(sfmt("%s must be a list of strings, got %s", what, tname(v)))
      end
      if want == "names" then
        for i = 1, #v do text_or_fail(v[i], sfmt("%s: each", what)) end
      end
    elseif want == "name" then
      if type(v) ~= "string" then
        fail(sfmt("%s must be a string, got %s", what, tname(v)))
      end
      text_or_fail(v, what)
    elseif want == "duration" then
      duration(v, what)
    elseif type(want) == "function" then
      local m = want(v, what)
      if m then fail(m) end
    elseif want == "number" then
      if type(v) ~= "number" then
        fail(sfmt("%s must be a number, got %s", what, tname(v)))
      elseif not finite(v) then
        fail(sfmt("%s must be a finite number, got %s", what, got(v)))
      end
    elseif type(v) ~= want then
      fail(sfmt("%s must be a %s, got %s", what, want, tname(v)))
    end
  end
end

local MAX_TIMED_NAME = 120 -- its timers are named after it (128 bytes)

local function check_name(kind, name)
  if type(name) ~= "string" or name == "" then
    fail(sfmt("%s needs a name: %s \"name\" { ... }", kind, kind))
  end
  if (kind == "journey" or kind == "case") and #name > MAX_TIMED_NAME then
    fail(sfmt("%s: a %s's name is at most %d bytes, got %d", kind, kind, MAX_TIMED_NAME,
              #name))
  end
  text_or_fail(name, sfmt("%s: a name", kind))
end

------------------------------------------------------------------------
-- Declarations
------------------------------------------------------------------------

local D = {}

-- While a variation's declarations are evaluated, this is the variation
-- they belong to. `variation {...} {...}` calls variation(circumstance)
-- before Lua builds the table of declarations, so the declarations made in
-- between are the variation's.
local open_variation = nil
local open_variation_line = nil

-- target returns where a declaration goes: the open variation, or the base.
local function target()
  return open_variation or B
end

check_params = function()
  if open_variation then return merge(B.params, open_variation.params) end
  return B.params
end

-- params is both the declaration, params { name = value }, and the table
-- the declared values are read from. In a declaration, params.x is a
-- reference resolved per circumstance, so that a variation's params reach
-- the payloads and SLAs that name them; inside a handler or predicate it is
-- the value resolved for the customer's circumstance (as c.params.x).
local current_params = nil

local function ref_misuse(r)
  local n = rawget(r, 1)
  error(sfmt("params.%s is resolved per circumstance: use it as a whole field value in a declaration, or c.params.%s inside a function", n, n), 2)
end
for _, mm in ipairs { "__add", "__sub", "__mul", "__div", "__mod", "__pow", "__unm",
                      "__idiv", "__band", "__bor", "__bxor", "__shl", "__shr", "__bnot",
                      "__concat", "__len", "__lt", "__le", "__call", "__index",
                      "__newindex" } do
  REF[mm] = ref_misuse
end
REF.__tostring = function(r) return "params." .. rawget(r, 1) end
REF.__metatable = false

-- subst replaces every params reference in v by its value in params.
function subst(v, params)
  if type(v) ~= "table" then return v end
  if rawequal(debug_getmetatable(v), REF) then return params[rawget(v, 1)] end
  local out
  for k, x in next, v do
    local y = subst(x, params)
    if not rawequal(y, x) then
      if not out then
        out = {}
        for k2, x2 in next, v do out[k2] = x2 end
        setmetatable(out, debug_getmetatable(v))
      end
      out[k] = y
    end
  end
  return out or v
end

D.params = setmetatable({}, {
  __call = function(_, t)
    if type(t) ~= "table" then
      fail(sfmt("params: expected a table, got %s", tname(t)))
    end
    local into = target().params
    for k, v in pairs(t) do
      if type(k) ~= "string" then fail("params: every name must be a string") end
      local path, bad = nonfinite(v, k)
      if path then
        fail(sfmt("params: '%s' must be a finite number, got %s", path, got(bad)))
      end
      into[k] = v
    end
  end,
  __index = function(_, k)
    if current_params then return current_params[k] end
    if B.params[k] == nil and not (open_variation and open_variation.params[k] ~= nil) then
      fail(sfmt("params: '%s' is not declared (declare it first with params { %s = ... })",
                tostring(k), tostring(k)))
    end
    return setmetatable({ k }, REF)
  end,
  __newindex = function() fail("params are declared with params { name = value }") end,
  __metatable = false,
})

-- history = { keep = N, max_age = DURATION }: how much of a customer's
-- moves in the journey is kept (the counts are kept whatever is trimmed).
local HISTORY_KEEP, HISTORY_MAX_KEEP = 20, 1000

local function check_history(v, what)
  if type(v) ~= "table" then
    return sfmt("%s must be a table such as { keep = 20, max_age = \"180d\" }, got %s",
                what, tname(v))
  end
  for k, x in pairs(v) do
    if k == "keep" then
      local n = type(x) == "number" and math.tointeger(x)
      if not n or n < 1 or n > HISTORY_MAX_KEEP then
        return sfmt("%s.keep must be a whole number from 1 to %d, got %s", what,
                    HISTORY_MAX_KEEP, type(x) == "number" and tostring(x) or tname(x))
      end
    elseif k == "max_age" then
      duration(x, what .. ".max_age")
    else
      return sfmt("%s: unknown field '%s' (known fields: keep, max_age)", what, tostring(k))
    end
  end
end

local JOURNEY = {
  stages = "names", goal = "string", inactive_after = "duration",
  description = "string", history = check_history,
}

-- finish_journey: the journey as a view uses it, from its spec resolved for
-- the circumstance (checked again, as finish_action's).
local function finish_journey(name, spec)
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
  local h = spec.history or {}
  return {
    name = name, stages = spec.stages, stage_set = set, goal = spec.goal,
    inactive_after = spec.inactive_after
      and duration(spec.inactive_after, sfmt("journey '%s': inactive_after", name)),
    keep = h.keep and math.tointeger(h.keep) or HISTORY_KEEP,
    max_age = h.max_age and duration(h.max_age, sfmt("journey '%s': history.max_age", name)),
    description = spec.description, spec = spec,
  }
end

function D.journey(name)
  check_name("journey", name)
  local into = target()
  return function(spec)
    check("journey", name, spec, JOURNEY)
    if into == B then
      if B.journeys[name] == nil then B.jorder[#B.jorder + 1] = name end
      B.where["journey:" .. name] = B.where["journey:" .. name] or here()
      B.journeys[name] = finish_journey(name, subst(spec, B.params))
      B.journeys[name].spec = spec
    else
      if B.journeys[name] == nil then
        fail(sfmt("variation: journey '%s' is not declared outside the variation", name))
      end
      into.journeys[name] = spec
    end
  end
end

local LIMITS = {
  max_impressions = true, per_day = true, cooldown = true,
  stop_after_rejects = true,
}

local function check_limits(v, what)
  if type(v) ~= "table" then
    return sfmt("%s must be a table, got %s", what, tname(v))
  end
  for k, x in pairs(v) do
    if not LIMITS[k] then
      return sfmt("%s: unknown limit '%s' (known: cooldown, max_impressions, per_day, stop_after_rejects)",
                  what, tostring(k))
    elseif k == "cooldown" then
      duration(x, what .. ".cooldown")
    elseif not finite(x) or x < 0 then
      return sfmt("%s.%s must be a finite number of 0 or more, got %s", what, k, got(x))
    end
  end
end

local function prob(v, what)
  if not finite(v) or v < 0 or v > 1 then
    return sfmt("%s must be a number between 0 and 1, got %s", what, got(v))
  end
end

-- a payload's numbers must be finite too: they are sent to the channel
local function check_payload(v, what)
  if type(v) ~= "table" then return sfmt("%s must be a table, got %s", what, tname(v)) end
  local path, bad = nonfinite(v, what)
  if path then return sfmt("%s must be a finite number, got %s", path, got(bad)) end
end

local ACTION = {
  group = "name", channels = "names", value = "number", weight = "number",
  eligible = "function", propensity = "function", prior = prob,
  explore = "boolean", payload = check_payload, description = "string",
  limits = check_limits,
}

function D.action(name)
  check_name("action", name)
  local into = target()
  return function(spec)
    check("action", name, spec, ACTION)
    local bad = spec.payload ~= nil and storable(spec.payload, sfmt("action '%s': payload", name))
    if bad then fail(bad) end
    if into == B and subst(spec, B.params).value == nil then
      fail(sfmt("action '%s': value is required", name))
    end
    if into.action_specs[name] == nil then into.aorder[#into.aorder + 1] = name end
    into.action_specs[name] = spec
    B.all_actions[name] = true
    B.where["action:" .. name] = B.where["action:" .. name] or here()
  end
end

local CASE = { sla = "duration", description = "string" }

function D.case(name)
  check_name("case", name)
  local into = target()
  return function(spec)
    check("case", name, spec, CASE)
    if into == B then
      local v = subst(spec, B.params)
      B.where["case:" .. name] = B.where["case:" .. name] or here()
      B.cases[name] = { name = name, sla = v.sla and duration(v.sla, sfmt("case '%s': sla", name)),
                        spec = spec }
    else
      if B.cases[name] == nil then
        fail(sfmt("variation: case '%s' is not declared outside the variation", name))
      end
      into.cases[name] = spec
    end
  end
end

-- levers { action_or_group = multiplier }: the analyst's hand on the score.
function D.levers(t)
  if type(t) ~= "table" then fail(sfmt("levers: expected a table, got %s", tname(t))) end
  local into = target().levers
  local at = here()
  for k, v in pairs(t) do
    if type(k) ~= "string" then fail("levers: every key must be an action or group name") end
    if not finite(v) or v < 0 then
      fail(sfmt("levers: '%s' must be a finite number of 0 or more, got %s", k, got(v)))
    end
    into[k] = v
    B.where["lever:" .. k] = at
  end
end

local POLICY = {
  max_per_day = "number",
  per_channel = function(v, what)
    if type(v) ~= "table" then return sfmt("%s must be a table, got %s", what, tname(v)) end
    for ch, n in pairs(v) do
      if type(ch) ~= "string" then
        return sfmt("%s: every entry must be channel = number", what)
      elseif not finite(n) or n < 0 then
        return sfmt("%s: '%s' must be a finite number of 0 or more, got %s", what, ch, got(n))
      end
    end
  end,
}

-- contact_policy { max_per_day = N, per_channel = { email = 1 } }: a
-- customer's budget of contacts across every action and journey.
function D.contact_policy(t)
  check("contact_policy", "business", t, POLICY)
  local into = target()
  if into == B then B.where.policy = B.where.policy or here() end
  into.policy = merge(into.policy, t)
end

function D.max_per_group(n)
  if not finite(n) or n < 1 then
    fail(sfmt("max_per_group: expected a finite number of at least 1, got %s", got(n)))
  end
  target().max_per_group = n
end

function D.arbitrate(fn)
  if type(fn) ~= "function" then
    fail(sfmt("arbitrate: expected a function(c, candidates), got %s", tname(fn)))
  end
  target().arbitrate = fn
end

-- token "secret": every request for this business must carry it.
function D.token(t)
  if open_variation then fail("token: cannot be declared inside a variation") end
  if type(t) ~= "string" or #t < 8 then
    fail(sfmt("token: expected a string of at least 8 characters, got %s", tname(t)))
  end
  B.token = t
end

-- sandbox { instructions = 20000000, memory = "128MiB" }: this business's
-- budget per event and memory cap, within the bounds below.
local SANDBOX_UNITS = { KiB = 1024, MiB = 1024 * 1024, GiB = 1024 * 1024 * 1024 }
function D.sandbox(t)
  if open_variation then fail("sandbox: cannot be declared inside a variation") end
  if type(t) ~= "table" then fail(sfmt("sandbox: expected a table, got %s", tname(t))) end
  local out = {}
  for k, v in pairs(t) do
    if k == "instructions" then
      if math.type(v) ~= "integer" or v < 100000 or v > 1000000000 then
        fail(sfmt("sandbox: instructions must be an integer from 100000 to 1000000000, got %s",
                  tostring(v)))
      end
      out.instructions = v
    elseif k == "memory" then
      local bytes = v
      if type(v) == "string" then
        local n, u = smatch(v, "^%s*(%d+)%s*([KMG]iB)%s*$")
        bytes = n and tonumber(n) * SANDBOX_UNITS[u] or nil
      end
      if math.type(bytes) ~= "integer" or bytes < 8 * SANDBOX_UNITS.MiB
         or bytes > SANDBOX_UNITS.GiB then
        fail(sfmt("sandbox: memory must be from \"8MiB\" to \"1GiB\" (or bytes), got %s",
                  type(v) == "string" and sfmt("%q", v) or tostring(v)))
      end
      out.memory = bytes
    else
      fail(sfmt("sandbox: unknown field '%s' (known fields: instructions, memory)", tostring(k)))
    end
  end
  B.sandbox = out
end

function D.on(etype, fn)
  if open_variation then
    fail("on(): handlers cannot be declared inside a variation")
  end
  if type(etype) ~= "string" or etype == "" then
    fail(sfmt("on: the event type must be a string, got %s", tname(etype)))
  end
  text_or_fail(etype, "on: the event type")
  if type(fn) ~= "function" then
    fail(sfmt("on(\"%s\", ...): the handler must be a function, got %s", etype, tname(fn)))
  end
  B.handlers[#B.handlers + 1] = { type = etype, fn = fn }
  B.by_type = {}
end

local CIRCUMSTANCE = { region = true, channel = true, product = true }

-- variation { region=, channel=, product= } { declarations... }
function D.variation(circ)
  if open_variation then
    fail("variation: variations cannot be nested")
  end
  if type(circ) ~= "table" then
    fail(sfmt("variation: expected { region = ..., channel = ..., product = ... }, got %s", tname(circ)))
  end
  local keys = 0
  for k, v in pairs(circ) do
    if not CIRCUMSTANCE[k] then
      fail(sfmt("variation: unknown circumstance '%s' (known: channel, product, region)", tostring(k)))
    end
    if type(v) ~= "string" or v == "" then
      fail(sfmt("variation: %s must be a string, got %s", k, type(v) == "string" and '""' or tname(v)))
    end
    text_or_fail(v, sfmt("variation: %s", k))
    keys = keys + 1
  end
  if keys == 0 then fail("variation: name at least one of region, channel, product") end
  local v = {
    circ = { region = circ.region, channel = circ.channel, product = circ.product },
    keys = keys, order = #B.variations + 1, line = here(),
    params = {}, action_specs = {}, aorder = {}, cases = {}, journeys = {},
    levers = {},
  }
  open_variation = v
  open_variation_line = here()
  return function(decls)
    open_variation = nil
    if type(decls) ~= "table" then
      fail(sfmt("variation: expected a table of declarations, got %s", tname(decls)))
    end
    B.variations[#B.variations + 1] = v
    B.views, B.nviews = {}, 0
  end
end

------------------------------------------------------------------------
-- Resolution: the view of the declarations for one circumstance
------------------------------------------------------------------------

-- finish_action: the action as a view uses it, from its spec resolved
-- for the circumstance (checked again: another variation's params may
-- have changed a field).
local function finish_action(name, spec)
  check("action", name, spec, ACTION)
  local a = { name = name }
  for k, v in pairs(spec) do a[k] = v end
  if type(a.value) ~= "number" then
    fail(sfmt("action '%s': value must be a number, got %s", name, tname(a.value)))
  end
  -- a param may have brought into the payload what cannot be stored
  local bad = a.payload ~= nil and storable(a.payload, sfmt("action '%s': payload", name))
  if bad then error(sfmt("%s: %s", B.where["action:" .. name] or "?", bad), 0) end
  a.weight = a.weight or 1
  a.prior = a.prior or 0.5
  a.alpha0, a.beta0 = 2 * a.prior, 2 * (1 - a.prior)
  if a.channels then
    a.channel_set = {}
    for _, ch in ipairs(a.channels) do a.channel_set[ch] = true end
    a.first_channel = a.channels[1]
  end
  local l = a.limits
  if l then
    a.cooldown_ms = l.cooldown and duration(l.cooldown, sfmt("action '%s': limits.cooldown", name))
  end
  return a
end

local function matches(v, ctx)
  local c = v.circ
  return (c.region == nil or c.region == ctx.region)
     and (c.channel == nil or c.channel == ctx.channel)
     and (c.product == nil or c.product == ctx.product)
end

local function by_specificity(x, y)
  if x.keys ~= y.keys then return x.keys < y.keys end
  return x.order < y.order
end

-- build_view merges every matching variation into the base, least specific
-- first, later declarations winning ties.
local function build_view(ctx)
  local list = {}
  for _, v in ipairs(B.variations) do
    if matches(v, ctx) then list[#list + 1] = v end
  end
  tsort(list, by_specificity)
  local params, specs, aorder = B.params, {}, {}
  local seen = {}
  for _, name in ipairs(B.aorder) do
    specs[name] = B.action_specs[name]; aorder[#aorder + 1] = name; seen[name] = true
  end
  local levers, policy = B.levers, B.policy
  local max_per_group, arbitrate = B.max_per_group, B.arbitrate
  local case_specs, journey_specs = {}, {}
  for name, k in pairs(B.cases) do case_specs[name] = k.spec end
  for name, j in pairs(B.journeys) do journey_specs[name] = j.spec end
  local applied = arr()
  -- what a declaration's errors are blamed on: the last variation that
  -- changed it (or every declaration, through params or levers), else
  -- the declaration itself
  local touched, all = {}, 0
  for i, v in ipairs(list) do
    applied[#applied + 1] = v.circ
    params = merge(params, v.params)
    for _, name in ipairs(v.aorder) do
      specs[name] = merge(specs[name], v.action_specs[name])
      if not seen[name] then aorder[#aorder + 1] = name; seen[name] = true end
      touched["action:" .. name] = i
    end
    levers = merge(levers, v.levers)
    if v.policy then
      policy = merge(policy, v.policy)
      touched.policy = i
    end
    max_per_group = v.max_per_group or max_per_group
    arbitrate = v.arbitrate or arbitrate
    for name, spec in pairs(v.cases) do
      case_specs[name] = merge(case_specs[name], spec)
      touched["case:" .. name] = i
    end
    for name, spec in pairs(v.journeys) do
      journey_specs[name] = merge(journey_specs[name], spec)
      touched["journey:" .. name] = i
    end
    if next(v.params) ~= nil or next(v.levers) ~= nil then all = i end
  end
  local saved = fallback
  local function blame(key)
    local i = touched[key] or 0
    if all > i then i = all end
    fallback = i > 0 and list[i].line or B.where[key]
  end
  -- every declaration finished with this circumstance's params
  local cases, journeys = {}, {}
  for name, spec in pairs(case_specs) do
    blame("case:" .. name)
    local k = subst(spec, params)
    cases[name] = { name = name, sla = k.sla and duration(k.sla, sfmt("case '%s': sla", name)),
                    spec = spec }
  end
  for name, spec in pairs(journey_specs) do
    blame("journey:" .. name)
    journeys[name] = finish_journey(name, subst(spec, params))
  end
  if policy then
    blame("policy")
    policy = subst(policy, params)
    check("contact_policy", "business", policy, POLICY)
  end
  local actions, alist, explores = {}, {}, false
  for i, name in ipairs(aorder) do
    blame("action:" .. name)
    local a = finish_action(name, subst(specs[name], params))
    a.lever = (levers[name] or 1) * (a.group and levers[a.group] or 1)
    local top = a.value * a.weight * a.lever
    if not finite(top) then
      fail(sfmt("action '%s': value × weight × levers is too large to score", name))
    end
    actions[name], alist[i] = a, a
    explores = explores or (a.explore == true)
  end
  fallback = saved
  return {
    params = params, actions = actions, aorder = aorder, levers = levers,
    cnba = H.nba_compile(alist, ctx.channel, policy, max_per_group), explores = explores,
    policy = policy, max_per_group = max_per_group, arbitrate = arbitrate,
    cases = cases, journeys = journeys, applied = applied,
  }
end

-- resolve costs one table lookup once a circumstance has been seen. The
-- key is unambiguous: the parts are text without NUL (or absent, which no
-- variation tells from "", since a variation's values are not empty).
local function resolve(ctx)
  local key = (ctx.region or "") .. "\0" .. (ctx.channel or "") .. "\0" .. (ctx.product or "")
  local view = B.views[key]
  if view then return view end
  view = build_view(ctx)
  if B.nviews >= MAX_VIEWS then B.views, B.nviews = {}, 0 end
  B.views[key] = view
  B.nviews = B.nviews + 1
  return view
end

-- check_all runs once every file has loaded: the references between
-- declarations, and every variation's view resolved once so that its
-- errors surface at load and not on a customer's event.
local function check_all()
  if open_variation then
    local at = open_variation_line or "?"
    open_variation = nil
    error(sfmt("%s: variation {...} must be followed by a table of declarations", at), 0)
  end
  local groups = {}
  for name, spec in pairs(B.action_specs) do
    if spec.group then groups[spec.group] = true end
  end
  for _, v in ipairs(B.variations) do
    for name, spec in pairs(v.action_specs) do
      if spec.group then groups[spec.group] = true end
    end
  end
  local function check_levers(levers, where)
    for k in pairs(levers) do
      if not B.all_actions[k] and not groups[k] then
        error(sfmt("%s: %slevers: '%s' is neither an action nor a group",
                   B.where["lever:" .. k] or "?", where, k), 0)
      end
    end
  end
  check_levers(B.levers, "")
  for name, j in pairs(B.journeys) do
    if j.goal and not j.stage_set[j.goal] then
      error(sfmt("journey '%s': goal '%s' is not one of its stages", name, j.goal), 0)
    end
  end
  for name, spec in pairs(B.action_specs) do
    if spec.value == nil then
      error(sfmt("%s: action '%s': value is required", B.where["action:" .. name] or "?", name), 0)
    end
  end
  for _, v in ipairs(B.variations) do
    local where = sfmt("variation %s: ", tostring(v.circ.region or "") .. "/" ..
                       tostring(v.circ.channel or "") .. "/" .. tostring(v.circ.product or ""))
    check_levers(v.levers, where)
    for name, spec in pairs(v.action_specs) do
      if not B.action_specs[name] and spec.value == nil then
        error(sfmt("%s: %saction '%s' exists only in this variation, so it needs a value",
                   B.where["action:" .. name] or "?", where, name), 0)
      end
    end
    build_view(v.circ)
  end
  build_view({})
end

------------------------------------------------------------------------
-- The customer object
------------------------------------------------------------------------

local C = {}
C.__index = C
C.__name = "customer"

-- Analytics: each event adds to counters named by \0-separated keys
-- ("j\0<journey>\0entered\0<stage>", "a\0<action>\0impressions"...); the
-- engine sums them per batch into the store's stats database in the
-- event's transaction, and API.stats builds the stats reply from them.
-- Every field is a name (journey, stage, action, metric, an action's
-- channel: text_or_fail) or a circumstance (from the request, or text from
-- attrs): none holds a NUL, so split0 reads each key back into the fields
-- it was made of (lua/nba.c builds the impression counters alike).
local STATS = {}
local function stat(key, n)
  STATS[key] = (STATS[key] or 0) + (n or 1)
end
-- The host empties STATS once it has the counters; an event that failed
-- may have left some behind.
local function reset_stats()
  if next(STATS) ~= nil then STATS = {} end
end
local ELAPSED_STEPS = 4 -- histogram buckets per doubling of the time to goal

-- dot: a method called with a dot, c.advance(...), gets the wrong self;
-- each method checks for self._s (a field lookup, no call) before it
-- uses self
local function dot(m)
  fail(sfmt("c.%s(...): call it with a colon, c:%s(...)", m, m))
end

local function journey_of(c, name)
  local j = c._view.journeys[name]
  if not j then
    fail(sfmt("unknown journey '%s'", tostring(name)))
  end
  return j
end

function C:stage(jname)
  if self._s == nil then dot("stage") end
  journey_of(self, jname)
  local js = self._s.journeys[jname]
  return js and js.stage
end

-- the counters split by the circumstance of the event
local function stat_by(c, pre, what)
  for _, k in ipairs { "region", "channel", "product" } do
    local v = c.context[k]
    if v then stat(pre .. "by\0" .. k .. "\0" .. v .. "\0" .. what) end
  end
end

-- count_moves gives a journey's state stored before the counts were kept
-- its counts, from its history (never trimmed then).
local function count_moves(js, now)
  local h = js.history
  if type(h) ~= "table" then h = arr(); js.history = h end
  local entered = {}
  for i = 1, #h do
    local s = type(h[i]) == "table" and h[i].stage
    if type(s) == "string" then entered[s] = (entered[s] or 0) + 1 end
  end
  local first = type(h[1]) == "table" and h[1].at
  js.moves, js.entered = #h, entered
  js.started_at = type(first) == "number" and first or js.since or now
end

-- trim keeps the newest j.keep entries of a journey's history and drops
-- those older than j.max_age; the newest entry always stays.
local function trim(h, j, now)
  local n = #h
  local first = n > j.keep and n - j.keep + 1 or 1
  if j.max_age then
    local cutoff = now - j.max_age
    while first < n do
      local e = h[first]
      local at = type(e) == "table" and e.at
      if type(at) == "number" and at >= cutoff then break end
      first = first + 1
    end
  end
  if first > 1 then
    tmove(h, first, n, 1)
    for i = n - first + 2, n do h[i] = nil end
  end
end

function C:advance(jname, stage)
  if self._s == nil then dot("advance") end
  local j = journey_of(self, jname)
  if not j.stage_set[stage] then
    fail(sfmt("journey '%s' has no stage '%s'", jname, tostring(stage)))
  end
  local js = self._s.journeys[jname]
  local pre = "j\0" .. jname .. "\0"
  if not js then
    js = { history = arr(), moves = 0, entered = {}, started_at = self.now }
    self._s.journeys[jname] = js
    stat(pre .. "customers")
    stat_by(self, pre, "customers")
  end
  if js.stage ~= stage then
    if js.stage then stat(pre .. "current\0" .. js.stage, -1) end
    stat(pre .. "current\0" .. stage)
    stat(pre .. "entered\0" .. stage)
    if not js.moves then count_moves(js, self.now) end
    js.stage, js.since = stage, self.now
    local h = js.history
    h[#h + 1] = { stage = stage, at = self.now }
    trim(h, j, self.now)
    js.moves = js.moves + 1
    js.entered[stage] = (js.entered[stage] or 0) + 1
    if stage == j.goal and not js.converted_at then
      js.converted_at = self.now
      stat(pre .. "converted")
      local ms = self.now - js.started_at
      local b = ms >= 1 and mfloor(math.log(ms, 2) * ELAPSED_STEPS) or 0
      stat(pre .. "elapsed\0" .. b)
      stat_by(self, pre, "converted")
    end
  end
  return stage
end

function C:count(name, n)
  if self._s == nil then dot("count") end
  if type(name) ~= "string" then
    fail(sfmt("c:count: the counter name must be a string, got %s", tname(name)))
  end
  n = n or 1
  if not finite(n) then
    fail(sfmt("c:count('%s', n): n must be a finite number, got %s", name, got(n)))
  end
  local counters = self._s.counters
  local old = counters[name]
  if old == nil then text_or_fail(name, "c:count: the counter name") end
  counters[name] = (old or 0) + n
  return counters[name]
end

function C:emit(name, data)
  if self._s == nil then dot("emit") end
  if type(name) ~= "string" or name == "" then
    fail(sfmt("c:emit: the name must be a string, got %s", tname(name)))
  end
  text_or_fail(name, "c:emit: the name")
  if data ~= nil and type(data) ~= "table" then
    fail(sfmt("c:emit('%s', data): data must be a table, got %s", name, tname(data)))
  end
  local e = self._emitted
  -- packed now: a value that cannot be stored is an error at this line,
  -- and what is published is the data as it was when emitted
  e[#e + 1] = { name = name, data = H.pack(data or {}, "c:emit data") }
end

function C:history(action)
  if self._s == nil then dot("history") end
  return self._s.actions[action]
end

-- Timers: durable, in the store's timers database (written in the event's
-- transaction), and listed in the state as timers[name] = due, so that a
-- later call can find the key to replace or cancel. Names: "a:<type>" for
-- c:after, "i:<journey>" for inactivity, "s:<case>" for case SLAs.
local MAX_TIMERS = 100

local function set_timer(c, name, due, etype, data)
  local st = c._s
  local tm = st.timers
  if not tm then tm = {}; st.timers = tm end
  local old = tm[name]
  if old == due then return end
  if old then H.timer_del(c.id, name, old) end
  if not old then
    local n = 0
    for _ in pairs(tm) do n = n + 1 end
    if n >= MAX_TIMERS then
      fail(sfmt("a customer can have at most %d timers pending", MAX_TIMERS))
    end
  end
  tm[name] = due
  H.timer_put(c.id, name, due, etype, data)
end

local function clear_timer(c, name)
  local tm = c._s.timers
  local old = tm and tm[name]
  if not old then return false end
  H.timer_del(c.id, name, old)
  tm[name] = nil
  if next(tm) == nil then c._s.timers = nil end
  return true
end

-- c:after(duration, type[, data]): an event of that type for this customer
-- once the duration has passed (one per type: a second call moves it).
function C:after(d, etype, data)
  if self._s == nil then dot("after") end
  local ms = duration(d, "c:after: the delay")
  if type(etype) ~= "string" or #etype == 0 or #etype > 64 then
    fail(sfmt("c:after: the event type must be a string of 1 to 64 bytes, got %s", tname(etype)))
  end
  text_or_fail(etype, "c:after: the event type")
  if data ~= nil and type(data) ~= "table" then
    fail(sfmt("c:after('%s', '%s', data): data must be a table, got %s", d, etype, tname(data)))
  end
  local due = self.now + ms
  set_timer(self, "a:" .. etype, due, etype, data)
  return due
end

-- c:cancel(type): the pending c:after of that type, if any; true if there was one.
function C:cancel(etype)
  if self._s == nil then dot("cancel") end
  if type(etype) ~= "string" then
    fail(sfmt("c:cancel: the event type must be a string, got %s", tname(etype)))
  end
  return clear_timer(self, "a:" .. etype)
end

-- c:score(journey, metric, value): a measure of the journey (CSAT, NPS,
-- effort...), kept per customer as the last value and a running count/sum.
function C:score(jname, metric, value)
  if self._s == nil then dot("score") end
  journey_of(self, jname)
  if type(metric) ~= "string" or metric == "" then
    fail(sfmt("c:score: the metric must be a string, got %s", tname(metric)))
  end
  text_or_fail(metric, "c:score: the metric")
  if not finite(value) then
    fail(sfmt("c:score('%s', '%s', value): value must be a finite number, got %s", jname,
              metric, got(value)))
  end
  local js = self._s.journeys[jname]
  if not js then
    fail(sfmt("c:score: the customer is not in journey '%s' (c:advance first)", jname))
  end
  local sc = js.scores
  if not sc then sc = {}; js.scores = sc end
  local m = sc[metric]
  if not m then m = { count = 0, sum = 0 }; sc[metric] = m end
  stat("j\0" .. jname .. "\0score\0" .. metric .. "\0count")
  stat("j\0" .. jname .. "\0score\0" .. metric .. "\0sum", value)
  m.last, m.at = value, self.now
  m.count, m.sum = m.count + 1, m.sum + value
  return value
end

function C:open_case(name, data)
  if self._s == nil then dot("open_case") end
  local k = self._view.cases[name]
  if not k then fail(sfmt("unknown case '%s'", tostring(name))) end
  local cs = { status = "open", opened_at = self.now, data = data }
  if k.sla then
    cs.due_at = self.now + k.sla
    set_timer(self, "s:" .. name, cs.due_at, "sla_breached", { case = name })
  end
  self._s.cases[name] = cs
end

function C:close_case(name, outcome)
  if self._s == nil then dot("close_case") end
  local cs = self._s.cases[name]
  if not cs or cs.status ~= "open" then
    fail(sfmt("case '%s' is not open for this customer", tostring(name)))
  end
  cs.status, cs.outcome, cs.closed_at = "closed", outcome, self.now
  clear_timer(self, "s:" .. name)
end

-- After a customer's own event: every journey with inactive_after that the
-- customer is in (and has not reached the goal of) gets its inactivity
-- timer moved to now + inactive_after.
local function touch_journeys(c)
  local js = c._s.journeys
  for name, j in pairs(c._view.journeys) do
    local s = js[name]
    if s then
      if j.inactive_after and s.stage ~= j.goal then
        set_timer(c, "i:" .. name, c.now + j.inactive_after, "inactive", { journey = name })
      elseif c._s.timers and c._s.timers["i:" .. name] then
        clear_timer(c, "i:" .. name)
      end
    end
  end
end

-- c:cohort(experiment, { name = share, ... }): a stable assignment, from a
-- hash of business, experiment and customer, kept in the customer's state
-- so that later changes of the shares do not move anyone.
function C:cohort(exp, shares)
  if self._s == nil then dot("cohort") end
  if type(exp) ~= "string" or exp == "" then
    fail(sfmt("c:cohort: the experiment name must be a string, got %s", tname(exp)))
  end
  local cs = self._s.cohorts
  if cs and cs[exp] then return cs[exp] end
  text_or_fail(exp, "c:cohort: the experiment name")
  if type(shares) ~= "table" then
    fail(sfmt("c:cohort('%s', shares): shares must be a table such as { control = 0.1, treatment = 0.9 }", exp))
  end
  local names, total = {}, 0
  for k, v in pairs(shares) do
    if type(k) ~= "string" or not finite(v) or v < 0 then
      fail(sfmt("c:cohort('%s', shares): every share must be name = a finite number of 0 or more",
                exp))
    end
    names[#names + 1] = k
    total = total + v
  end
  if total <= 0 then fail(sfmt("c:cohort('%s', shares): the shares add up to 0", exp)) end
  tsort(names)
  local u = H.hash01(H.business .. "\0" .. exp .. "\0" .. self.id) * total
  local pick = names[#names]
  for _, k in ipairs(names) do
    u = u - shares[k]
    if u < 0 then pick = k; break end
  end
  if not cs then cs = {}; self._s.cohorts = cs end
  cs[exp] = pick
  return pick
end

local function new_state(id, now)
  return {
    id = id, attrs = {}, counters = {}, journeys = {}, cases = {},
    actions = {}, created_at = now, updated_at = now,
  }
end

local function new_customer(st, ctx, view, now)
  return setmetatable({
    id = st.id, attrs = st.attrs, context = ctx, params = view.params, now = now,
    _s = st, _view = view, _emitted = arr(),
  }, C)
end

-- The circumstance comes from the request, else from the customer's attrs
-- when they hold text there: it names analytics counters (joined with NUL
-- bytes) and the reply's channel, as a request's fields do. A handler that
-- stores anything else there is told so (state_problem).
local function from_attrs(v)
  if type(v) == "string" and is_text(v) then return v end
  return nil
end

local function circumstance(req, st)
  local a = st.attrs
  return req.region or from_attrs(a.region), req.channel or from_attrs(a.channel),
         req.product or from_attrs(a.product)
end

local function context_of(req, st)
  local region, channel, product = circumstance(req, st)
  return { region = region, channel = channel, product = product }
end

------------------------------------------------------------------------
-- Next best action
------------------------------------------------------------------------

-- A small seeded generator (splitmix64) so that exploration is
-- reproducible for a given request.
local function rng(seed)
  local s = seed
  return function()
    s = s + 0x9E3779B97F4A7C15
    local z = s
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    z = z ~ (z >> 31)
    return ((z >> 11) + 0.5) / 9007199254740992.0
  end
end

local function gamma(k, u)
  if k < 1 then
    return gamma(k + 1, u) * u() ^ (1 / k)
  end
  local d = k - 1 / 3
  local c = 1 / math.sqrt(9 * d)
  while true do
    local x = math.sqrt(-2 * math.log(u())) * math.cos(2 * math.pi * u())
    local v = 1 + c * x
    if v > 0 then
      v = v * v * v
      local w = u()
      if math.log(w) < 0.5 * x * x + d - d * v + d * math.log(v) then
        return d * v
      end
    end
  end
end

local function beta_sample(a, b, u)
  local x, y = gamma(a, u), gamma(b, u)
  return x / (x + y)
end

-- explore: a sample of the model's Beta(alpha, beta), from a generator
-- seeded by the request and the action, so that a request is reproducible.
local function sample(alpha, beta, name, seed)
  if alpha <= 0 then return 0 end
  if beta <= 0 then return 1 end
  return beta_sample(alpha, beta, rng(H.hash64(seed .. "\0" .. name)))
end

local function shown_today(h, now)
  local n = 0
  local recent = h.recent
  if recent then
    for i = 1, #recent do if recent[i] > now - DAY then n = n + 1 end end
  end
  return n
end

-- why says in a sentence why an action was dropped (for explain only).
local function why(reason, a, h, now, x, view, channel, limit)
  local l = a and a.limits
  if reason == "channel" then return sfmt("not offered on channel '%s'", channel)
  elseif reason == "ineligible" then return "eligible(c) returned false"
  elseif reason == "max_impressions" then
    return sfmt("shown %d times, at most %d", h.impressions or 0, l.max_impressions)
  elseif reason == "stop_after_rejects" then
    return sfmt("rejected %d times, stops after %d", h.rejected or 0, l.stop_after_rejects)
  elseif reason == "cooldown" then
    return sfmt("last shown %d s ago, cooldown %s", (now - h.last_shown) // 1000, l.cooldown)
  elseif reason == "per_day" then
    return sfmt("shown %d times in the last 24 h, at most %d", shown_today(h, now), l.per_day)
  elseif reason == "arbitrate" then return "removed by arbitrate(c, candidates)"
  elseif reason == "max_per_group" then
    return sfmt("group '%s' already has %d", x, view.max_per_group)
  elseif reason == "max_per_day" then
    return sfmt("the customer's budget of %d contacts a day is spent", view.policy.max_per_day)
  elseif reason == "per_channel" then
    return sfmt("the budget of %d contacts a day on '%s' is spent", view.policy.per_channel[x], x)
  elseif reason == "limit" then return sfmt("ranked below the top %d", limit)
  end
end

-- A wrong answer from arbitrate is reported where the analyst wrote it.
local function arbitrate_wrong(fn, msg)
  error(sfmt("%s: arbitrate: %s", where_of(fn), msg), 0)
end

-- arbitrated: the analyst's arbitrate sees the ranked candidates, each
-- {name, score, value, propensity, group, channel, payload}, and returns the
-- list to choose from; nba_decide gets back their ranks, in that order.
local function arbitrated(c, view, channel, trace, ranked, scores, props)
  local list, rank_of = {}, {}
  for i = 1, #ranked do
    local a = ranked[i]
    local x = { name = a.name, score = scores[i], value = a.value, propensity = props[i],
                group = a.group, channel = channel or a.first_channel, payload = a.payload }
    list[i], rank_of[x] = x, i
  end
  local out = view.arbitrate(c, list)
  if type(out) ~= "table" then
    arbitrate_wrong(view.arbitrate, sfmt("must return the list of candidates, got %s", tname(out)))
  end
  local kept, ranks = {}, {}
  for i, x in ipairs(out) do
    if not rank_of[x] then
      arbitrate_wrong(view.arbitrate, sfmt("entry %d is not one of the candidates it was given", i))
    end
    if kept[x] then
      arbitrate_wrong(view.arbitrate, sfmt("entry %d ('%s') is listed twice", i, x.name))
    end
    kept[x], ranks[i] = true, rank_of[x]
  end
  if trace then
    for _, x in ipairs(list) do
      if not kept[x] then
        trace[#trace + 1] = { step = "action", action = x.name, kept = false,
                              reason = "arbitrate", why = why("arbitrate") }
      end
    end
  end
  return ranks
end

-- nba: the next best actions for c, in C (lua/nba.c) but for the analyst's
-- functions and explain's sentences. Returns the actions (packed for the
-- reply), the trace when asked and whether the history changed.
local function nba(c, view, req)
  local st, now = c._s, c.now
  local channel = c.context.channel
  local limit = req.limit or 3
  local trace = req.explain and arr() or nil
  -- the seed of exploration, built only when some action explores
  local seed = view.explores and (c.id .. "\0" .. (req.id or tostring(now))) or ""
  if trace then
    trace[1] = { step = "variations", applied = view.applied }
  end
  local arb = view.arbitrate and function(ranked, scores, props)
    return arbitrated(c, view, channel, trace, ranked, scores, props)
  end
  local out, changed = H.nba_decide(view.cnba, c, st, now, seed, sample, limit,
                                    req.record ~= false, STATS, trace, arb)
  if trace then
    local hist = st.actions or {}
    for _, r in ipairs(trace) do
      if r.reason and not r.why then
        r.why = why(r.reason, view.actions[r.action], hist[r.action], now, r._x, view,
                    channel, limit)
        r._x = nil
      end
    end
  end
  return out, trace, changed
end

------------------------------------------------------------------------
-- Entry points (called by the host)
------------------------------------------------------------------------

-- at_handler places msg at the line where the handler fn begins;
-- handler_fault raises it there.
local function at_handler(fn, etype, msg)
  local info = getinfo(fn, "S")
  return sfmt("%s:%d: %s (left there by this handler for '%s')",
              ssub(info.source, 2), info.linedefined, msg, etype)
end

local function handler_fault(fn, etype, msg)
  error(at_handler(fn, etype, msg), 0)
end

-- The last handler the event ran, blamed for a state that cannot be
-- packed (nil for a decision, or an event without handlers).
local blamed, blamed_type

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

local OUTCOMES = { accepted = true, rejected = true, ignored = true }

-- respond records a customer's answer to an action: the action's history
-- and the adaptive model (in the event's transaction).
local function respond(st, ctx, data, now)
  local name, outcome = data.action, data.outcome
  if type(name) ~= "string" or not B.all_actions[name] then
    coded("bad_request", sfmt("a response needs data.action naming a declared action, got %s",
                              type(name) == "string" and sfmt("'%s'", name) or tname(name)))
  end
  if not OUTCOMES[outcome] then
    coded("bad_request", sfmt("a response needs data.outcome = accepted, rejected or ignored, got %s",
                              type(outcome) == "string" and sfmt("'%s'", outcome) or tname(outcome)))
  end
  local h = st.actions[name]
  if not h then
    h = { impressions = 0, accepted = 0, rejected = 0, ignored = 0 }
    st.actions[name] = h
  end
  h[outcome] = (h[outcome] or 0) + 1
  h.last_response = now
  stat("a\0" .. name .. "\0" .. outcome)
  if ctx.channel then stat("a\0" .. name .. "\0ch\0" .. ctx.channel .. "\0" .. outcome) end
  H.model_add(name, "*", outcome)
  if ctx.channel then H.model_add(name, ctx.channel, outcome) end
end

local API = {}

-- event runs the handlers for req.type and, when asked, decides.
-- st is the stored state (nil for a new customer). Returns the new state
-- and the reply table.
function API.event(st, req, now, version)
  reset_stats()
  fallback = nil
  blamed = nil
  st = st or new_state(req.customer, now)
  local ctx = context_of(req, st)
  local view = resolve(ctx)
  current_params = view.params
  local data = req.data or {}
  if req.type == "response" then respond(st, ctx, data, now) end
  local c = new_customer(st, ctx, view, now)
  local ev = {
    type = req.type, id = req.id, ts = req.ts or now, data = data,
    channel = req.channel, region = req.region, product = req.product,
  }
  if req.timer then
    -- a timer firing: it is no longer pending
    local tm = st.timers
    if tm and tm[req.timer] and tm[req.timer] <= now then
      tm[req.timer] = nil
      if next(tm) == nil then st.timers = nil end
    end
    if req.type == "inactive" and data.journey then
      stat("j\0" .. data.journey .. "\0inactive")
    end
    if req.type == "sla_breached" and data.case and st.cases[data.case]
       and st.cases[data.case].status == "open" then
      st.cases[data.case].breached_at = now
    end
  end
  local list = handlers_for(req.type)
  local n = #list
  for i = 1, n do
    fallback = list[i]
    list[i](c, ev)
    -- what a handler left in the state that cannot be stored is its
    -- error, reported where it begins: checked here after each handler
    -- but the last, whose is found by packing the state (API.blame)
    local bad = state_problem(st, i < n)
    if bad then handler_fault(list[i], req.type, bad) end
  end
  fallback = nil
  blamed, blamed_type = list[n], req.type
  if not req.timer then
    touch_journeys(c)
    -- a timer whose handler failed is gone from the store, but the
    -- rollback kept it listed here: forget it once it is well past due
    local tm = st.timers
    if tm then
      for name, due in pairs(tm) do
        if due < now - 60000 then tm[name] = nil end
      end
      if next(tm) == nil then st.timers = nil end
    end
  end
  st.updated_at = now
  local reply = { ok = true, rules = version }
  if req.decide ~= false then
    -- the handlers may have changed what the circumstance is
    local region, channel, product = circumstance(req, st)
    if region ~= ctx.region or channel ~= ctx.channel or product ~= ctx.product then
      local ctx2 = { region = region, channel = channel, product = product }
      c.context, c._view = ctx2, resolve(ctx2)
      c.params = c._view.params
      current_params = c.params
    end
    reply.actions, reply.trace = nba(c, c._view, req)
  end
  reply.journeys = journeys_reply(st)
  if #c._emitted > 0 then reply.emitted = c._emitted end
  return st, reply, STATS
end

-- decide ranks the next best actions without an event.
function API.decide(st, req, now, version)
  reset_stats()
  fallback = nil
  blamed = nil
  st = st or new_state(req.customer, now)
  local ctx = context_of(req, st)
  local view = resolve(ctx)
  current_params = view.params
  local c = new_customer(st, ctx, view, now)
  local actions, trace, changed = nba(c, view, req)
  local reply = {
    ok = true, rules = version, journeys = journeys_reply(st),
    actions = actions, trace = trace,
  }
  if changed then
    st.updated_at = now
    return st, reply, STATS
  end
  return nil, reply, STATS -- nothing recorded: the stored state stays as it is
end

-- blame(msg): the host could not pack the state the event left (msg names
-- the value, "c.attrs.f: cannot store..."); the last handler did it, since
-- the ones before were checked after they ran.
function API.blame(msg)
  if blamed then return at_handler(blamed, blamed_type, msg) end
  return msg
end

-- stats(counters, journey|nil) builds the stats reply from the summed
-- counters (key without the business -> number).
local function split0(key)
  local parts, i = {}, 1
  while true do
    local z = key:find("\0", i, true)
    if not z then parts[#parts + 1] = key:sub(i); return parts end
    parts[#parts + 1] = key:sub(i, z - 1)
    i = z + 1
  end
end

local function quantile(hist, total, q)
  local want, seen = q * total, 0
  local keys = {}
  for b in pairs(hist) do keys[#keys + 1] = b end
  tsort(keys)
  for _, b in ipairs(keys) do
    seen = seen + hist[b]
    if seen >= want then return mfloor(2 ^ ((b + 0.5) / ELAPSED_STEPS)) end
  end
  return nil
end

function API.stats(counters, only)
  if only ~= nil and not B.journeys[only] then
    coded("bad_request", sfmt("unknown journey '%s'", only))
  end
  local J, A = {}, {}
  for name, j in pairs(B.journeys) do
    if only == nil or only == name then
      local stages = {}
      for _, st in ipairs(j.stages) do stages[st] = { entered = 0, current = 0 } end
      J[name] = { stages = stages, goal = j.goal, customers = 0, converted = 0,
                  inactive = 0, scores = {}, by = {}, _elapsed = {}, _n = 0 }
    end
  end
  if only == nil then
    for name in pairs(B.all_actions) do
      A[name] = { impressions = 0, accepted = 0, rejected = 0, ignored = 0, by_channel = {} }
    end
  end
  for key, v in pairs(counters) do
    local p = split0(key)
    local j = p[1] == "j" and J[p[2]]
    local a = p[1] == "a" and A[p[2]]
    if j then
      local what = p[3]
      if (what == "entered" or what == "current") and j.stages[p[4]] then
        j.stages[p[4]][what] = v
      elseif what == "customers" or what == "converted" or what == "inactive" then
        j[what] = v
      elseif what == "elapsed" then
        j._elapsed[tonumber(p[4])] = v
        j._n = j._n + v
      elseif what == "score" and p[5] then
        local m = j.scores[p[4]] or { count = 0, sum = 0 }
        j.scores[p[4]] = m
        m[p[5]] = v
      elseif what == "by" and p[5] then
        local byk = j.by[p[4]] or {}
        j.by[p[4]] = byk
        local e = byk[p[5]] or { customers = 0, converted = 0 }
        byk[p[5]] = e
        e[p[6]] = v
      end
    elseif a then
      if p[3] == "ch" and p[5] then
        local e = a.by_channel[p[4]] or { impressions = 0, accepted = 0, rejected = 0, ignored = 0 }
        a.by_channel[p[4]] = e
        e[p[5]] = v
      elseif a[p[3]] then
        a[p[3]] = v
      end
    end
  end
  for _, j in pairs(J) do
    j.conversion_rate = j.customers > 0 and j.converted / j.customers or 0
    if j._n > 0 then
      j.elapsed_ms = { p50 = quantile(j._elapsed, j._n, 0.5), p90 = quantile(j._elapsed, j._n, 0.9) }
    end
    for _, m in pairs(j.scores) do
      m.mean = m.count > 0 and (m.sum or 0) / m.count or nil
      m.sum = nil
    end
    j._elapsed, j._n = nil, nil
  end
  for _, a in pairs(A) do
    a.acceptance_rate = a.impressions > 0 and a.accepted / a.impressions or 0
  end
  local out = { ok = true, journeys = J }
  if only == nil then out.actions = A end
  return out
end

API.check = check_all
function API.token() return B.token end
function API.sandbox()
  local sb = B.sandbox or {}
  return sb.instructions, sb.memory
end
API.CODED = CODED

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
  -- the pattern functions count their steps against the event's budget
  for k, f in pairs(H.patterns) do env.string[k] = f end
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
