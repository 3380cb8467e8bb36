-- Same logical schema as migrations/postgres (see there for what each column means).
CREATE TABLE cache_entries (
    exact_key   BLOB PRIMARY KEY NOT NULL,
    scope       BLOB,
    tenant      TEXT,
    model       TEXT NOT NULL,
    query_text  TEXT,
    embedding   BLOB,
    answer      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX cache_entries_expires_at ON cache_entries (expires_at_ms);
