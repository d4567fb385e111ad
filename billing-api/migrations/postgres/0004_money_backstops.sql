-- Backstops for the money rules, whatever the code does:
-- a purchase and each of its changes is in one of the six states the API knows, and a decline names one
-- of its six reasons;
ALTER TABLE purchases ADD CONSTRAINT purchases_state_known
    CHECK (state IN ('pending', 'charged', 'declined', 'expired', 'cancelled', 'refunded'));
ALTER TABLE purchase_changes ADD CONSTRAINT purchase_changes_state_known
    CHECK (state IN ('pending', 'charged', 'declined', 'expired', 'cancelled', 'refunded'));
ALTER TABLE purchases ADD CONSTRAINT purchases_decline_reason_known
    CHECK (decline_reason IS NULL OR decline_reason IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance'));
ALTER TABLE purchase_changes ADD CONSTRAINT purchase_changes_decline_reason_known
    CHECK (decline_reason IS NULL OR decline_reason IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance'));
-- and a purchase is charged at most once: one charge entry per side (subscriber, SP) a purchase.
CREATE UNIQUE INDEX ledger_one_charge_per_purchase ON ledger_entries (purchase_id, account_type) WHERE kind = 'charge';
