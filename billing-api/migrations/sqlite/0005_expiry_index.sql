-- The same expiry index as PostgreSQL's (its migration 0002): a plain index on the expiry time, which
-- the sweep reads from its mark on. The two schemas then have the same indexes (a test holds them to it).
CREATE INDEX purchases_expiry ON purchases (expires_at_us);
DROP INDEX purchases_pending_expiry;
