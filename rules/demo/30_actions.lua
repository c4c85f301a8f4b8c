-- The offers the next best action chooses from. score = propensity × value
-- × weight; propensity is learnt from responses (0.5 before any).

action "welcome_discount" {
  group = "discounts",
  channels = { "web", "app", "email" },
  value = 20,
  eligible = function(c) return (c.attrs.orders or 0) == 0 end,
  limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  payload = { title = "Welcome! 10% off your first order", percent = params.welcome_discount },
}

action "premium_membership" {
  group = "memberships",
  channels = { "web", "app" },
  value = 120,
  eligible = function(c) return (c.attrs.spend or 0) >= 100 end,
  payload = { title = "Go premium", price = params.premium_price },
}

action "newsletter" {
  group = "engagement",
  value = 2,
  payload = { title = "Get our newsletter" },
}
