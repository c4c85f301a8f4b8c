-- Analyst tests for the demo shop: `choreo test rules/demo` runs them on a
-- temporary store with a virtual clock, and a reload that breaks one of
-- them is refused while the old rules keep serving.

test("a first page view moves a visitor to browsing", function(t)
  local r = t:event { customer = "ann", type = "page_view", channel = "web" }
  t:ok(r.ok, "the event is accepted")
  t:eq(r.journeys.onboarding.stage, "browsing")
end)

test("a new customer is offered the welcome discount first", function(t)
  local r = t:event { customer = "ann", type = "page_view", channel = "web" }
  t:eq(r.actions[1].name, "welcome_discount")
  t:eq(r.actions[1].payload.percent, 10)
end)

test("two purchases make a loyal customer, 500 spent a VIP", function(t)
  t:event { customer = "bob", type = "purchase", data = { amount = 200 } }
  local r = t:event { customer = "bob", type = "purchase", data = { amount = 300 } }
  t:eq(r.journeys.onboarding.stage, "loyal")
  t:eq(r.emitted[1].name, "vip_reached")
  local c = t:get("bob")
  t:eq(c.attrs.spend, 500)
  t:eq(c.counters.events, 2)
end)

test("the welcome discount rests an hour after it is shown", function(t)
  local function offered(r)
    for _, a in ipairs(r.actions) do
      if a.name == "welcome_discount" then return true end
    end
    return false
  end
  t:ok(offered(t:event { customer = "cy", type = "page_view", channel = "web" }))
  t:ok(not offered(t:decide { customer = "cy", channel = "web" }), "in cooldown")
  t:advance_clock("61m")
  t:ok(offered(t:decide { customer = "cy", channel = "web" }), "after the cooldown")
end)

test("two rejections stop the welcome discount", function(t)
  for _ = 1, 2 do
    t:event { customer = "dee", type = "response", channel = "web",
              data = { action = "welcome_discount", outcome = "rejected" } }
  end
  local r = t:decide { customer = "dee", channel = "web", record = false }
  for _, a in ipairs(r.actions) do t:ok(a.name ~= "welcome_discount", a.name) end
end)

test("a cart left for an hour gets a reminder; a purchase cancels it", function(t)
  t:event { customer = "eve", type = "add_to_cart" }
  t:ok(t:get("eve").timers["a:cart_reminder"], "the reminder is pending")
  t:advance_clock("59m")
  t:eq(t:get("eve").counters.events, 1, "not yet")
  t:advance_clock("2m")
  t:eq(t:get("eve").counters.events, 2, "the reminder ran as an event")
  t:eq(t:get("eve").timers["a:cart_reminder"], nil)

  t:event { customer = "fay", type = "add_to_cart" }
  t:event { customer = "fay", type = "purchase", data = { amount = 10 } }
  t:advance_clock("2h")
  t:eq(t:get("fay").counters.events, 2, "no reminder after the purchase")
end)

test("three quiet days make an inactive event", function(t)
  t:event { customer = "gus", type = "page_view" }
  t:advance_clock("2d")
  t:event { customer = "gus", type = "page_view" }   -- moves the deadline
  t:advance_clock("2d")
  t:eq(t:get("gus").counters.inactive_onboarding, nil)
  t:advance_clock("1d")
  t:eq(t:get("gus").counters.inactive_onboarding, 1)
end)

test("a ticket open past its SLA is escalated", function(t)
  t:event { customer = "hal", type = "ticket_opened", data = { subject = "late" } }
  t:advance_clock("49h")
  local c = t:get("hal")
  t:eq(c.cases.support_ticket.status, "open")
  t:ok(c.cases.support_ticket.breached_at, "the breach is recorded")
end)

test("a survey scores the journey", function(t)
  t:event { customer = "ivy", type = "page_view" }
  t:event { customer = "ivy", type = "survey", data = { csat = 4 } }
  t:event { customer = "ivy", type = "survey", data = { csat = 5 } }
  local s = t:get("ivy").journeys.onboarding.scores.csat
  t:eq(s.last, 5)
  t:eq(s.count, 2)
  t:eq(s.sum, 9)
end)
