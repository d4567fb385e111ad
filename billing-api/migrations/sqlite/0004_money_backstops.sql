-- Backstops for the money rules, whatever the code does (SQLite adds no CHECK to a table after the
-- fact, so triggers stand in for PostgreSQL's constraints):
-- a purchase and each of its changes is in one of the six states the API knows, and a decline names one
-- of its six reasons;
CREATE TRIGGER purchases_state_known_insert BEFORE INSERT ON purchases
    WHEN NEW.state NOT IN ('pending', 'charged', 'declined', 'expired', 'cancelled', 'refunded')
      OR (NEW.decline_reason IS NOT NULL AND NEW.decline_reason NOT IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance'))
    BEGIN SELECT RAISE(ABORT, 'purchases_state_known'); END;
CREATE TRIGGER purchases_state_known_update BEFORE UPDATE OF state, decline_reason ON purchases
    WHEN NEW.state NOT IN ('pending', 'charged', 'declined', 'expired', 'cancelled', 'refunded')
      OR (NEW.decline_reason IS NOT NULL AND NEW.decline_reason NOT IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance'))
    BEGIN SELECT RAISE(ABORT, 'purchases_state_known'); END;
CREATE TRIGGER purchase_changes_state_known BEFORE INSERT ON purchase_changes
    WHEN NEW.state NOT IN ('pending', 'charged', 'declined', 'expired', 'cancelled', 'refunded')
      OR (NEW.decline_reason IS NOT NULL AND NEW.decline_reason NOT IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance'))
    BEGIN SELECT RAISE(ABORT, 'purchase_changes_state_known'); END;
-- and a purchase is charged at most once: one charge entry per side (subscriber, SP) a purchase.
CREATE UNIQUE INDEX ledger_one_charge_per_purchase ON ledger_entries (purchase_id, account_type) WHERE kind = 'charge';
