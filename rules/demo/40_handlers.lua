-- Handlers run in file order; "*" runs for every event.

on("*", function(c, e)
  c:count("events")
  if c:stage("onboarding") == nil then c:advance("onboarding", "visitor") end
end)

on("page_view", function(c, e)
  c:count("page_views")
  if c:stage("onboarding") == "visitor" then c:advance("onboarding", "browsing") end
end)

on("add_to_cart", function(c, e)
  c:advance("onboarding", "cart")
  c:after("1h", "cart_reminder")          -- a durable timer: an event later
end)

on("cart_reminder", function(c, e)
  if c:stage("onboarding") == "cart" then
    c:emit("send_email", { template = "cart_reminder" })
  end
end)

-- no event for 3 days (the journey's inactive_after) while not yet loyal
on("inactive", function(c, e)
  c:count("inactive_" .. e.data.journey)
end)

on("purchase", function(c, e)
  local amount = tonumber(e.data.amount) or 0
  c.attrs.orders = (c.attrs.orders or 0) + 1
  c.attrs.spend = (c.attrs.spend or 0) + amount
  c:cancel("cart_reminder")
  if c.attrs.orders >= 2 then
    c:advance("onboarding", "loyal")
  else
    c:advance("onboarding", "customer")
  end
  if c.attrs.spend >= c.params.vip_spend and not c.attrs.vip then
    c.attrs.vip = true
    c:emit("vip_reached", { spend = c.attrs.spend })
  end
end)

on("profile", function(c, e)
  -- copy the fields a customer told us about into their attributes
  for _, k in ipairs { "name", "age", "region", "segment" } do
    if e.data[k] ~= nil then c.attrs[k] = e.data[k] end
  end
end)

on("ticket_opened", function(c, e)
  c:open_case("support_ticket", { subject = e.data.subject })
end)

on("ticket_closed", function(c, e)
  c:close_case("support_ticket", e.data.outcome or "solved")
end)

-- a ticket still open when its SLA (48h) has passed
on("sla_breached", function(c, e)
  c:emit("escalate", { case = e.data.case })
end)

-- how the customer rated the support they got
on("survey", function(c, e)
  c:score("onboarding", "csat", tonumber(e.data.csat) or 0)
end)
