-- gtpcharge ledger, PostgreSQL. Money: BIGINT minor units. Times: BIGINT Unix microseconds (UTC).
CREATE TABLE service_providers (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_us BIGINT NOT NULL
);

-- API keys (SP), probe credentials and operator keys; only the SHA-256 of the secret is stored.
CREATE TABLE credentials (
    key_id              TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('sp', 'probe', 'operator')),
    secret_sha256       TEXT NOT NULL UNIQUE,
    service_provider_id BIGINT REFERENCES service_providers (id),
    name                TEXT NOT NULL,
    created_at_us       BIGINT NOT NULL,
    revoked_at_us       BIGINT
);

CREATE TABLE accounts (
    msisdn        TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('prepaid', 'postpaid')),
    currency      TEXT NOT NULL,
    balance       BIGINT NOT NULL,
    credit_limit  BIGINT NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    daily_cap     BIGINT NOT NULL DEFAULT 0 CHECK (daily_cap >= 0),
    monthly_cap   BIGINT NOT NULL DEFAULT 0 CHECK (monthly_cap >= 0),
    barred        BIGINT NOT NULL DEFAULT 0,
    updated_at_us BIGINT NOT NULL
);

CREATE TABLE purchases (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service_provider_id BIGINT NOT NULL REFERENCES service_providers (id),
    token               TEXT NOT NULL UNIQUE,
    product_id          TEXT NOT NULL,
    description         TEXT NOT NULL,
    amount              BIGINT NOT NULL CHECK (amount > 0),
    currency            TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    request_sha256      TEXT NOT NULL,
    state               TEXT NOT NULL,
    created_at_us       BIGINT NOT NULL,
    expires_at_us       BIGINT NOT NULL,
    charged_msisdn      TEXT,
    charged_at_us       BIGINT,
    refunded_amount     BIGINT NOT NULL DEFAULT 0,
    decline_reason      TEXT,
    UNIQUE (service_provider_id, idempotency_key)
);
CREATE INDEX purchases_pending_expiry ON purchases (expires_at_us) WHERE state = 'pending';
CREATE INDEX purchases_by_sp ON purchases (service_provider_id, id);

-- Double-entry, append-only: every movement is two or more rows whose amounts sum to zero per currency.
CREATE TABLE ledger_entries (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    movement_id   TEXT NOT NULL,
    at_us         BIGINT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('charge', 'refund', 'adjustment')),
    account_type  TEXT NOT NULL CHECK (account_type IN ('subscriber', 'sp', 'carrier')),
    account_ref   TEXT NOT NULL,
    currency      TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    purchase_id   BIGINT REFERENCES purchases (id)
);
CREATE INDEX ledger_by_account ON ledger_entries (account_type, account_ref, at_us);

CREATE TABLE refunds (
    purchase_id BIGINT NOT NULL REFERENCES purchases (id),
    refund_key  TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    reason      TEXT NOT NULL,
    at_us       BIGINT NOT NULL,
    PRIMARY KEY (purchase_id, refund_key)
);

-- Every state change of a purchase, in commit order per SP: the WatchPurchases stream and its cursor.
CREATE TABLE purchase_changes (
    cursor              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service_provider_id BIGINT NOT NULL,
    purchase_id         BIGINT NOT NULL REFERENCES purchases (id),
    state               TEXT NOT NULL,
    refunded_amount     BIGINT NOT NULL,
    decline_reason      TEXT,
    at_us               BIGINT NOT NULL
);
CREATE INDEX purchase_changes_by_sp ON purchase_changes (service_provider_id, cursor);

-- Every reported sighting, kept for audit (a token seen from a second MSISDN is flagged here).
CREATE TABLE sightings (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    purchase_id    BIGINT REFERENCES purchases (id),
    token          TEXT NOT NULL,
    msisdn         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    other_msisdn   BIGINT NOT NULL DEFAULT 0,
    probe_key_id   TEXT NOT NULL,
    seen_at_us     BIGINT NOT NULL,
    reported_at_us BIGINT NOT NULL
);
