-- The reference workload of docs/performance.md, as an analyst would write
-- it. tests/bench/peers/ holds the same logic for Redis and Tarantool; a
-- change here must be made there too.

journey "shop" { stages = { "visitor", "browsing", "cart", "customer" }, goal = "customer" }

-- 20 actions a01..a20, each with one eligibility condition (minimum age,
-- segment or region), the same contact policy, and the adaptive model's
-- propensity (prior 0.5: (1 + accepted) / (2 + responses)).
for i = 1, 20 do
  local eligible
  if i % 3 == 1 then
    local min_age = 18 + (i % 5) * 5
    eligible = function(c) return c.attrs.age >= min_age end
  elseif i % 3 == 2 then
    eligible = function(c) return c.attrs.segment ~= "bronze" end
  else
    eligible = function(c) return c.attrs.region ~= "APAC" end
  end
  action(string.format("a%02d", i)) {
    group = "g" .. ((i - 1) % 4 + 1),
    channels = { "web", "app" },
    value = 10 + 5 * i,
    eligible = eligible,
    limits = { max_impressions = 3, cooldown = "1h", stop_after_rejects = 2 },
  }
end

-- The regional variation of the score: EU × 1.2.
variation { region = "EU" } {
  levers { g1 = 1.2, g2 = 1.2, g3 = 1.2, g4 = 1.2 },
}

-- Pre-population: the profile event carries the ten attributes.
on("profile", function(c, e)
  for k, v in pairs(e.data) do c.attrs[k] = v end
  c:advance("shop", "visitor")
end)

on("page_view", function(c)
  c:count("views")
  if c:stage("shop") == "visitor" then c:advance("shop", "browsing") end
end)

on("add_to_cart", function(c)
  c:count("carts")
  c:advance("shop", "cart")
end)

on("purchase", function(c)
  c:count("purchases")
  c:advance("shop", "customer")
end)
