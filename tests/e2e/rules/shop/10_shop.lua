-- The e2e shop: a journey, three actions, handlers for every kind of effect.
params { price = 9.99 }

journey "onboarding" { stages = { "visitor", "browsing", "cart", "customer" }, goal = "customer" }

action "discount" {
  group = "offers", channels = { "web", "app" }, value = 20,
  eligible = function(c) return (c.attrs.orders or 0) == 0 end,
  payload = { title = "10% off", price = params.price },
}
action "membership" { group = "members", channels = { "web" }, value = 100,
  eligible = function(c) return (c.attrs.spend or 0) >= 100 end }
action "newsletter" { group = "engagement", value = 2 }

on("*", function(c, e) c:count("events") end)
on("page_view", function(c, e)
  if c:stage("onboarding") == nil then c:advance("onboarding", "browsing") end
end)
on("add_to_cart", function(c, e) c:advance("onboarding", "cart") end)
on("purchase", function(c, e)
  c.attrs.orders = (c.attrs.orders or 0) + 1
  c.attrs.spend = (c.attrs.spend or 0) + (e.data.amount or 0)
  c:advance("onboarding", "customer")
  c:emit("thanks", { amount = e.data.amount })
end)
on("profile", function(c, e)
  for k, v in pairs(e.data) do c.attrs[k] = v end
  c:count("profile_updates", 2)
end)
on("remind_me", function(c, e)
  c:after(e.data.after or "1s", "reminder", { note = e.data.note })
end)
on("reminder", function(c, e)
  c:count("reminders")
  c:emit("reminded", { note = e.data.note })
end)
on("never_mind", function(c, e) c:cancel("reminder") end)
