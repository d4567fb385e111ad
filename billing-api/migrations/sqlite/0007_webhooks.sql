-- Signed webhooks: the same schema as PostgreSQL's migration 0006 (README, "Webhooks"). The outbox is `purchase_changes` itself, written in the same
-- transaction as every state change; an endpoint remembers up to which change it has queued deliveries.
CREATE TABLE webhook_endpoints (
    service_provider_id BIGINT PRIMARY KEY REFERENCES service_providers (id),
    url                 TEXT NOT NULL,
    -- The signing secret, kept to sign (an HMAC key cannot be stored as a hash); the previous one keeps
    -- signing until `previous_until_us` (rotation overlap).
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_until_us   BIGINT,
    queued_cursor       BIGINT NOT NULL,
    created_at_us       BIGINT NOT NULL,
    updated_at_us       BIGINT NOT NULL
);

-- One delivery per change and endpoint, until delivered (2xx) or abandoned (72 hours of retries).
CREATE TABLE webhook_deliveries (
    change_cursor       BIGINT PRIMARY KEY REFERENCES purchase_changes (cursor),
    service_provider_id BIGINT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_us     BIGINT NOT NULL,
    created_at_us       BIGINT NOT NULL,
    delivered_at_us     BIGINT,
    abandoned_at_us     BIGINT,
    last_status         BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_us) WHERE delivered_at_us IS NULL AND abandoned_at_us IS NULL;

-- Every attempt: when, which event, the HTTP status (0: no answer) and why it failed.
CREATE TABLE webhook_attempts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    service_provider_id BIGINT NOT NULL,
    change_cursor       BIGINT NOT NULL,
    at_us               BIGINT NOT NULL,
    status              BIGINT NOT NULL,
    error               TEXT NOT NULL,
    duration_us         BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_by_sp ON webhook_attempts (service_provider_id, id);

-- The audit trail's new action (the table rebuilt for its CHECK).
CREATE TABLE audit_log_new (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us   BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('sp.create', 'key.create', 'key.revoke', 'account.set', 'pin.set', 'device.revoke', 'webhook.set')),
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
INSERT INTO audit_log_new (id, at_us, actor, action, subject, detail)
    SELECT id, at_us, actor, action, subject, detail FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
