-- The demo shop: a small web shop with an onboarding journey and a
-- next best action over three offers. Files load in lexical order, so
-- parameters come first.

params {
  premium_price = 9.99,
  welcome_discount = 10,   -- percent
  vip_spend = 500,         -- total spend that makes a VIP
}
