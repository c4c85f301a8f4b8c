-- 20 actions, 3 variations: the decision measured by tests/bench/nba.c
params { price = 9.99 }
journey "j" { stages = { "a", "b", "c", "d" }, goal = "d" }

action "a00" {
  group = "g0", channels = { "web", "app" }, value = 10,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 0", price = params.price },
}
action "a01" {
  group = "g1", channels = { "web", "app" }, value = 17,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 1", price = params.price },
}
action "a02" {
  group = "g2", channels = { "web", "app" }, value = 24,
  eligible = function(c) return c.context.region ~= "APAC" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 2", price = params.price },
}
action "a03" {
  group = "g3", channels = { "web", "app" }, value = 31,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 3", price = params.price },
}
action "a04" {
  group = "g4", channels = { "web", "app" }, value = 38,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 4", price = params.price },
}
action "a05" {
  group = "g0", channels = { "web", "app" }, value = 45,
  eligible = function(c) return c.context.region ~= "APAC" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 5", price = params.price },
}
action "a06" {
  group = "g1", channels = { "web", "app" }, value = 52,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 6", price = params.price },
}
action "a07" {
  group = "g2", channels = { "web", "app" }, value = 59,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 7", price = params.price },
}
action "a08" {
  group = "g3", channels = { "web", "app" }, value = 66,
  eligible = function(c) return c.context.region ~= "APAC" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 8", price = params.price },
}
action "a09" {
  group = "g4", channels = { "web", "app" }, value = 73,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 9", price = params.price },
}
action "a10" {
  group = "g0", channels = { "web", "app" }, value = 80,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 10", price = params.price },
}
action "a11" {
  group = "g1", channels = { "web", "app" }, value = 87,
  eligible = function(c) return c.context.region ~= "APAC" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 11", price = params.price },
}
action "a12" {
  group = "g2", channels = { "web", "app" }, value = 94,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 12", price = params.price },
}
action "a13" {
  group = "g3", channels = { "web", "app" }, value = 101,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 13", price = params.price },
}
action "a14" {
  group = "g4", channels = { "web", "app" }, value = 108,
  eligible = function(c) return c.context.region ~= "APAC" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 14", price = params.price },
}
action "a15" {
  group = "g0", channels = { "web", "app" }, value = 115,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 15", price = params.price },
}
action "a16" {
  group = "g1", channels = { "web", "app" }, value = 122,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 16", price = params.price },
}
action "a17" {
  group = "g2", channels = { "web", "app" }, value = 129,
  eligible = function(c) return c.context.region ~= "APAC" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 17", price = params.price },
}
action "a18" {
  group = "g3", channels = { "web", "app" }, value = 136,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 18", price = params.price },
}
action "a19" {
  group = "g4", channels = { "web", "app" }, value = 143,
  eligible = function(c) return c.attrs.segment == "gold" end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "offer 19", price = params.price },
}
variation { region = "EU" } { params { price = 8.99 }, levers { g1 = 1.2 } }
variation { channel = "app" } { action "a03" { value = 99 } }
variation { region = "EU", channel = "app" } { action "a07" { payload = { title = "app EU" } } }
on("page_view", function(c, e) c:count("views") if c:stage("j") == nil then c:advance("j", "a") end end)
