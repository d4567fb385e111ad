-- The audit trail of operator actions (keys created or revoked, SPs created, accounts created or
-- changed), through `admin` or the AccountService: who, what, on what, when. Rows are only ever added.
CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_us   BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('sp.create', 'key.create', 'key.revoke', 'account.set')),
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
