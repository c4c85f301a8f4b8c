-- The variations layer. Least specific first; the most specific wins.

variation { region = "EU" } {
  params { card_fee = 39, kyc_sla = "24h" },
  action "personal_loan" { payload = { title = "Personal loan (EU)" } },
}

variation { region = "US" } {
  params { loan_rate = 7.4 },
}

variation { channel = "branch" } {
  -- an advisor in the branch closes loans more often
  action "personal_loan" { weight = 1.5 },
}

variation { region = "EU", channel = "app" } {
  params { card_fee = 29 },
  action "premium_card" { payload = { title = "Premium card — app price" } },
}

variation { product = "mortgage" } {
  params { loan_sla = "10d" },
  levers { loans = 0.5 },        -- do not push a loan onto a mortgage customer
}

variation { region = "EU", product = "mortgage" } {
  -- an action only offered there
  action "green_mortgage_rate" { group = "loans", value = 500, prior = 0.1,
                                 payload = { title = "Green mortgage rate", rate = 3.2 } },
}
