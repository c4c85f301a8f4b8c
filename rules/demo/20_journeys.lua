-- A customer's way from first visit to a second purchase.
journey "onboarding" {
  stages = { "visitor", "browsing", "cart", "customer", "loyal" },
  goal = "loyal",
  inactive_after = "3d",
}

case "support_ticket" { sla = "48h" }
