-- A retail bank's onboarding, after the Pega article: one journey, and the
-- prices and service levels that differ by region, channel and product kept
-- on their own layer (30_variations.lua), not in the journey.

params {
  card_fee = 49,          -- yearly fee of the premium card
  loan_rate = 6.9,        -- personal loan APR, percent
  kyc_sla = "48h",        -- how long identity checks may take
  loan_sla = "5d",        -- how long a loan decision may take
}
