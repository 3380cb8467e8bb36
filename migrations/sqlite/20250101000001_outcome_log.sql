-- Same logical schema as migrations/postgres (see there for what each column means).
-- UUIDs are 16-byte BLOBs, times RFC 3339 TEXT, JSON TEXT, as sqlx encodes them for SQLite.
CREATE TABLE request_log (
    id                 BLOB PRIMARY KEY NOT NULL,
    created_at         TEXT NOT NULL,
    tenant             TEXT,
    key_id             BLOB,
    route              TEXT,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    stream             BOOLEAN NOT NULL,
    candidates         TEXT,
    propensity         REAL,
    checkpoint_version TEXT,
    shadow_choice      TEXT,
    prompt_hash        TEXT,
    embedding          BLOB,
    prompt_text        TEXT,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    cost_usd           REAL,
    latency_ms         REAL NOT NULL,
    first_token_ms     REAL,
    status             INTEGER NOT NULL,
    error_class        TEXT,
    cache_result       TEXT
);
CREATE INDEX request_log_created_at ON request_log (created_at);
CREATE INDEX request_log_tenant_created_at ON request_log (tenant, created_at);

CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  BLOB NOT NULL,
    score       REAL NOT NULL CHECK (score >= 0 AND score <= 1),
    source      TEXT NOT NULL,
    comment     TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX feedback_request_id ON feedback (request_id);

CREATE TABLE api_keys (
    id          BLOB PRIMARY KEY NOT NULL,
    key_hash    BLOB NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    name        TEXT,
    rpm         INTEGER,
    tpm         INTEGER,
    budget_usd  REAL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TEXT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
