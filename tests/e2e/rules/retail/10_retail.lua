-- 3 regions × 3 channels × 2 products: one offer whose price, title and
-- value vary on the variations layer, and actions that exist only in some
-- circumstances.
params { price = 100, currency = "USD" }

action "offer" {
  group = "main", value = 10,
  payload = { title = "Offer", price = params.price, currency = params.currency, tags = { "base" } },
}
action "always" { value = 1 }

variation { region = "EU" }   { params { price = 90, currency = "EUR" } }
variation { region = "APAC" } { params { price = 80, currency = "JPY" } }
variation { channel = "app" }   { action "offer" { value = 20 } }
variation { channel = "email" } { action "offer" { payload = { title = "Offer by mail" } } }
variation { product = "pro" }   { action "offer" { payload = { tags = { "pro" } } } }
variation { region = "EU", channel = "app" } { action "offer" { payload = { title = "EU app offer" } } }
variation { region = "APAC", product = "pro" } { params { price = 75 } }
variation { region = "US", channel = "web", product = "basic" } {
  action "us_web_basic_only" { value = 1000, payload = { title = "only here" } },
}
