-- A charge updates its purchase in place (a heap-only, HOT, update: no new index entries) only if it
-- changes no indexed column. The partial index on pending purchases named `state`, so every charge wrote
-- a new entry into each of the table's four other indexes. The expiry sweep, the one reader of that
-- index, instead remembers how far it has swept and reads only purchases expiring after that (less a
-- short look-back), through a plain index on the expiry time. Free space is left in each page for the
-- in-place updates.
-- On a large table the index build holds off writes to purchases until it is done (one transaction,
-- like every migration): upgrade in a quiet hour (README, "The billing API").
CREATE INDEX purchases_expiry ON purchases (expires_at_us);
DROP INDEX purchases_pending_expiry;
ALTER TABLE purchases SET (fillfactor = 70);

CREATE TABLE expiry_sweep (
    id             INT PRIMARY KEY CHECK (id = 1),
    swept_until_us BIGINT NOT NULL
);
INSERT INTO expiry_sweep (id, swept_until_us) VALUES (1, 0);
