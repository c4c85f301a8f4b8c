on("*", function(c, e)
  if c:stage("onboarding") == nil then c:advance("onboarding", "visitor") end
  for _, k in ipairs { "region", "channel", "product" } do
    if e[k] then c.attrs[k] = e[k] end
  end
end)

on("profile", function(c, e)
  c.attrs.age = e.data.age
  c.attrs.income = e.data.income
end)

on("application_submitted", function(c, e)
  c:advance("onboarding", "applied")
  c:open_case("kyc_check")
end)

on("identity_verified", function(c, e)
  c:close_case("kyc_check", "passed")
  c:advance("onboarding", "verified")
end)

on("account_funded", function(c, e)
  c:advance("onboarding", "funded")
  c:emit("welcome_pack", { sla = c.params.kyc_sla })
end)

on("loan_requested", function(c, e)
  c:open_case("loan_application", { amount = e.data.amount })
end)
