-- Consent on the handset and two-phase purchases (README, "Consent on the handset").
-- Who may create NETWORK purchases: SPs that existed before keep today's behaviour; a new SP must be
-- allowed by the operator.
ALTER TABLE service_providers ADD COLUMN network_consent BIGINT NOT NULL DEFAULT 0;
UPDATE service_providers SET network_consent = 1;

-- A purchase's consent ('network' or 'device'), who captures ('automatic' or 'manual'), the device
-- nonce, and its hold: amount, when, until when (NULL once the hold has ended, so the hold index holds
-- only live holds), what was captured.
ALTER TABLE purchases ADD COLUMN consent TEXT NOT NULL DEFAULT 'network' CHECK (consent IN ('network', 'device'));
ALTER TABLE purchases ADD COLUMN capture_mode TEXT NOT NULL DEFAULT 'automatic' CHECK (capture_mode IN ('automatic', 'manual'));
ALTER TABLE purchases ADD COLUMN consent_nonce TEXT;
ALTER TABLE purchases ADD COLUMN authorization_ttl_s BIGINT NOT NULL DEFAULT 300;
ALTER TABLE purchases ADD COLUMN authorized_amount BIGINT;
ALTER TABLE purchases ADD COLUMN authorized_at_us BIGINT;
ALTER TABLE purchases ADD COLUMN hold_expires_at_us BIGINT;
ALTER TABLE purchases ADD COLUMN captured_amount BIGINT;
CREATE INDEX purchases_hold_expiry ON purchases (hold_expires_at_us);

-- The states and decline reasons of two-phase purchases.
ALTER TABLE purchases DROP CONSTRAINT purchases_state_known;
ALTER TABLE purchase_changes DROP CONSTRAINT purchase_changes_state_known;
ALTER TABLE purchases DROP CONSTRAINT purchases_decline_reason_known;
ALTER TABLE purchase_changes DROP CONSTRAINT purchase_changes_decline_reason_known;
ALTER TABLE purchases ADD CONSTRAINT purchases_state_known
    CHECK (state IN ('pending', 'authorized', 'charged', 'declined', 'expired', 'cancelled', 'refunded', 'voided'));
ALTER TABLE purchase_changes ADD CONSTRAINT purchase_changes_state_known
    CHECK (state IN ('pending', 'authorized', 'charged', 'declined', 'expired', 'cancelled', 'refunded', 'voided'));
ALTER TABLE purchases ADD CONSTRAINT purchases_decline_reason_known
    CHECK (decline_reason IS NULL OR decline_reason IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance', 'subscriber-mismatch', 'consent-refused', 'pin-locked'));
ALTER TABLE purchase_changes ADD CONSTRAINT purchase_changes_decline_reason_known
    CHECK (decline_reason IS NULL OR decline_reason IN ('unknown-subscriber', 'barred', 'currency-mismatch', 'daily-cap', 'monthly-cap', 'insufficient-balance', 'subscriber-mismatch', 'consent-refused', 'pin-locked'));

-- Holds are an account of their own in the double entry: 'hold' (ref: the purchase id) receives the
-- authorized amount ('hold'), and pays it out to the SP ('capture') or back to the subscriber ('release').
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('charge', 'refund', 'adjustment', 'hold', 'capture', 'release'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_account_type_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_account_type_check
    CHECK (account_type IN ('subscriber', 'sp', 'carrier', 'hold'));
-- One hold and one capture per purchase and side, whatever the code does.
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
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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

-- The operator's new actions in the audit trail: setting a PIN, revoking a device.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('sp.create', 'key.create', 'key.revoke', 'account.set', 'pin.set', 'device.revoke'));
