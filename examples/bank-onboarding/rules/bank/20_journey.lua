journey "onboarding" {
  stages = { "visitor", "applied", "verified", "funded" },
  goal = "funded",
  inactive_after = "7d",
}

case "kyc_check" { sla = params.kyc_sla }
case "loan_application" { sla = params.loan_sla }

action "premium_card" {
  group = "cards",
  channels = { "web", "app", "branch" },
  value = 120,
  eligible = function(c) return (c.attrs.age or 0) >= 18 and (c.attrs.income or 0) >= 30000 end,
  limits = { max_impressions = 3, cooldown = "1d", stop_after_rejects = 2 },
  payload = { title = "Premium card", fee = params.card_fee },
}

action "basic_card" {
  group = "cards",
  value = 40,
  eligible = function(c) return (c.attrs.age or 0) >= 18 end,
  payload = { title = "Everyday card", fee = 0 },
}

action "personal_loan" {
  group = "loans",
  channels = { "web", "branch" },
  value = 300,
  prior = 0.2,
  eligible = function(c) return c:stage("onboarding") == "funded" end,
  payload = { title = "Personal loan", rate = params.loan_rate },
}

action "savings_account" {
  group = "savings",
  value = 25,
  payload = { title = "Savings account", rate = 2.1 },
}

max_per_group(1)
