-- Replicas read what the others wrote since their last look (`[cache] refresh_ms`), and a
-- restart loads the newest entries first: both select by `created_at_ms`, which without an
-- index is a full scan of the table every refresh.
CREATE INDEX cache_entries_created_at ON cache_entries (created_at_ms);
