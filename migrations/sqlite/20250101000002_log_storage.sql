-- Postgres tunes where outcome rows are stored here (see migrations/postgres); SQLite keeps
-- rows in its B-tree pages already. Kept so both databases report the same schema version.
SELECT 1;
