-- A mobile operator keeping customers who are likely to leave: a churn
-- next best action under contact policies, learning from every response.

params { discount_pct = 20, bonus_gb = 10 }

journey "retention" {
  stages = { "stable", "at_risk", "offered", "retained", "churned" },
  goal = "retained",
}

-- at most two contacts a day in all, and one SMS
contact_policy { max_per_day = 2, per_channel = { sms = 1 } }

action "retention_discount" {
  group = "price",
  channels = { "sms", "app", "call" },
  value = 60,
  prior = 0.3,
  eligible = function(c) return (c.attrs.churn_risk or 0) >= 0.6 end,
  limits = { max_impressions = 2, cooldown = "2d", stop_after_rejects = 1 },
  payload = { title = "20 % off for 12 months", pct = params.discount_pct },
}

action "data_bonus" {
  group = "value",
  channels = { "sms", "app" },
  value = 20,
  prior = 0.5,
  eligible = function(c) return (c.attrs.churn_risk or 0) >= 0.3 end,
  limits = { per_day = 1, stop_after_rejects = 3 },
  payload = { title = "10 GB on us", gb = params.bonus_gb },
}

action "device_upgrade" {
  group = "value",
  channels = { "app", "call", "store" },
  value = 150,
  prior = 0.1,
  eligible = function(c) return (c.attrs.tenure_months or 0) >= 24 end,
  limits = { max_impressions = 3, cooldown = "7d" },
  payload = { title = "Early upgrade" },
}

action "loyalty_call" {
  group = "service",
  channels = { "call" },
  value = 40,
  propensity = function(c) return (c.attrs.churn_risk or 0) * 0.5 end,
  payload = { title = "A call from the loyalty team" },
}

max_per_group(1)

on("usage", function(c, e)
  c.attrs.churn_risk = e.data.churn_risk
  c.attrs.tenure_months = e.data.tenure_months
  if (c.attrs.churn_risk or 0) >= 0.6 then
    c:advance("retention", "at_risk")
  elseif c:stage("retention") == nil then
    c:advance("retention", "stable")
  end
end)

on("response", function(c, e)
  if e.data.outcome == "accepted" then
    c:advance("retention", "retained")
    c:emit("fulfil", { action = e.data.action })
  end
end)

on("port_out", function(c, e)
  c:advance("retention", "churned")
end)
