-- Response cache entries, so that a restarted gateway (or another replica) starts warm.
-- exact_key: blake3 of tenant + answer-changing request fields; scope: blake3 of tenant +
-- parameters + conversation before the last user message (NULL: exact-match only);
-- query_text: that last user message (what the semantic verifier compares); embedding: its
-- f32 vector; answer: the cached answer as JSON (body and/or stream chunks); times in Unix ms.
CREATE TABLE cache_entries (
    exact_key   BYTEA PRIMARY KEY,
    scope       BYTEA,
    tenant      TEXT,
    model       TEXT NOT NULL,
    query_text  TEXT,
    embedding   BYTEA,
    answer      JSONB NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX cache_entries_expires_at ON cache_entries (expires_at_ms);
