-- Keep outcome rows in the heap page instead of TOAST. A row with a 384-dimension embedding
-- (1.5 KB of floats) is just over Postgres' default 2 KB toasting threshold: each insert
-- would first try to compress the floats (they do not compress) and then write the embedding
-- to the TOAST table and its index, tripling the work per row. Rows still go to TOAST above
-- 8 KB (long prompts).
ALTER TABLE request_log SET (toast_tuple_target = 8160);
ALTER TABLE request_log ALTER COLUMN embedding SET STORAGE EXTERNAL;

-- Rows arrive in time order, so a BRIN index answers time-range scans (training reads) at a
-- fraction of a B-tree's cost per insert.
DROP INDEX request_log_created_at;
CREATE INDEX request_log_created_at ON request_log USING brin (created_at);
