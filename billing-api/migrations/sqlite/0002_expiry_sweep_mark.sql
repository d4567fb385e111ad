-- How far the expiry sweep has gone (see the PostgreSQL migration of the same name: there the partial
-- index on pending purchases is replaced; SQLite keeps it, and both sweep the same way).
CREATE TABLE expiry_sweep (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    swept_until_us BIGINT NOT NULL
);
INSERT INTO expiry_sweep (id, swept_until_us) VALUES (1, 0);
