-- Consent on the handset and two-phase purchases: the same schema as PostgreSQL's migration 0005.
-- SQLite alters no CHECK after the fact: the states are triggers (as in 0004), and ledger_entries, whose
-- kinds and account types are CHECKs, is rebuilt with the new ones.
ALTER TABLE service_providers ADD COLUMN network_consent BIGINT NOT NULL DEFAULT 0;
UPDATE service_providers SET network_consent = 1;

ALTER TABLE purchases ADD COLUMN consent TEXT NOT NULL DEFAULT 'network' CHECK (consent IN ('network', 'device'));
ALTER TABLE purchases ADD COLUMN capture_mode TEXT NOT NULL DEFAULT 'automatic' CHECK (capture_mode IN ('automatic', 'manual'));
ALTER TABLE purchases ADD COLUMN consent_nonce TEXT;
ALTER TABLE purchases ADD COLUMN authorization_ttl_s BIGINT NOT NULL DEFAULT 300;
ALTER TABLE purchases ADD COLUMN authorized_amount BIGINT;
ALTER TABLE purchases ADD COLUMN authorized_at_us BIGINT;
ALTER TABLE purchases ADD COLUMN hold_expires_at_us BIGINT;
ALTER TABLE purchases ADD COLUMN captured_amount BIGINT;
CREATE INDEX purchases_hold_expiry ON purchases (hold_expires_at_us);

DROP TRIGGER purchases_state_known_insert;
DROP TRIGGER purchases_state_known_update;
DROP TRIGGER purchase_changes_state_known;
CREATE TRIGGER purchases_state_known_insert BEFORE INSERT ON purchases
    WHEN NEW.state NOT IN ('pending', 'authorized', 'charged', 'declined', 'expired', 'cancelled', 'refunded', 'voided')
      OR (NEW.decline_reason IS NOT NULL AND NEW.decline_reason NOT IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance', 'subscriber-mismatch', 'consent-refused', 'pin-locked'))
    BEGIN SELECT RAISE(ABORT, 'purchases_state_known'); END;
CREATE TRIGGER purchases_state_known_update BEFORE UPDATE OF state, decline_reason ON purchases
    WHEN NEW.state NOT IN ('pending', 'authorized', 'charged', 'declined', 'expired', 'cancelled', 'refunded', 'voided')
      OR (NEW.decline_reason IS NOT NULL AND NEW.decline_reason NOT IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance', 'subscriber-mismatch', 'consent-refused', 'pin-locked'))
    BEGIN SELECT RAISE(ABORT, 'purchases_state_known'); END;
CREATE TRIGGER purchase_changes_state_known BEFORE INSERT ON purchase_changes
    WHEN NEW.state NOT IN ('pending', 'authorized', 'charged', 'declined', 'expired', 'cancelled', 'refunded', 'voided')
      OR (NEW.decline_reason IS NOT NULL AND NEW.decline_reason NOT IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance', 'subscriber-mismatch', 'consent-refused', 'pin-locked'))
    BEGIN SELECT RAISE(ABORT, 'purchase_changes_state_known'); END;

CREATE TABLE ledger_entries_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    movement_id   TEXT NOT NULL,
    at_us         BIGINT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('charge', 'refund', 'adjustment', 'hold', 'capture', 'release')),
    account_type  TEXT NOT NULL CHECK (account_type IN ('subscriber', 'sp', 'carrier', 'hold')),
    account_ref   TEXT NOT NULL,
    currency      TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    purchase_id   BIGINT REFERENCES purchases (id)
);
INSERT INTO ledger_entries_new (id, movement_id, at_us, kind, account_type, account_ref, currency, amount, purchase_id)
    SELECT id, movement_id, at_us, kind, account_type, account_ref, currency, amount, purchase_id FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE INDEX ledger_by_account ON ledger_entries (account_type, account_ref, at_us);
CREATE UNIQUE INDEX ledger_one_charge_per_purchase ON ledger_entries (purchase_id, account_type) WHERE kind = 'charge';
CREATE UNIQUE INDEX ledger_one_hold_per_purchase ON ledger_entries (purchase_id, kind, account_type) WHERE kind IN ('hold', 'capture');

-- Payment PINs: salted Argon2id (PHC string); `failures` wrong tries in a row, locked at 5.
CREATE TABLE account_pins (
    msisdn        TEXT PRIMARY KEY REFERENCES accounts (msisdn),
    pin_hash      TEXT NOT NULL,
    failures      BIGINT NOT NULL DEFAULT 0,
    locked_at_us  BIGINT,
    updated_at_us BIGINT NOT NULL
);

-- Device enrollments: a public key waiting for its token to be seen, then bound by the PIN.
CREATE TABLE enrollments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    token           TEXT NOT NULL UNIQUE,
    public_key      TEXT NOT NULL,
    label           TEXT NOT NULL,
    created_at_us   BIGINT NOT NULL,
    expires_at_us   BIGINT NOT NULL,
    sighted_msisdn  TEXT,
    sighted_at_us   BIGINT,
    -- 1 once the token was seen from a second MSISDN: never bound.
    conflicted      BIGINT NOT NULL DEFAULT 0,
    device_id       BIGINT
);

-- Enrolled device keys, each bound to one MSISDN.
CREATE TABLE devices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    msisdn        TEXT NOT NULL,
    public_key    TEXT NOT NULL UNIQUE,
    label         TEXT NOT NULL,
    enrolled_at_us BIGINT NOT NULL,
    revoked_at_us BIGINT
);
CREATE INDEX devices_by_msisdn ON devices (msisdn);

-- Every confirmation that reached a decision, kept as evidence: who (device, MSISDN), when, what was
-- shown and signed (the statement's exact bytes and the signature, hex), and what it decided.
CREATE TABLE consents (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    purchase_id    BIGINT NOT NULL REFERENCES purchases (id),
    device_id      BIGINT NOT NULL,
    msisdn         TEXT NOT NULL,
    statement      TEXT NOT NULL,
    signature      TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    decision       TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    at_us          BIGINT NOT NULL
);
CREATE INDEX consents_by_purchase ON consents (purchase_id);

-- The operator's new actions in the audit trail: setting a PIN, revoking a device (the table rebuilt
-- for its CHECK).
CREATE TABLE audit_log_new (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us   BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('sp.create', 'key.create', 'key.revoke', 'account.set', 'pin.set', 'device.revoke')),
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
INSERT INTO audit_log_new (id, at_us, actor, action, subject, detail)
    SELECT id, at_us, actor, action, subject, detail FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
