-- The outcome log: one row per request the gateway routed, written by the batch writer.
-- Training reads it (with `feedback`) to learn where to send each request.
CREATE TABLE request_log (
    id                 UUID PRIMARY KEY,          -- UUIDv7: time-ordered, also the request id clients see
    created_at         TIMESTAMPTZ NOT NULL,      -- when the request arrived
    tenant             TEXT,                      -- from the virtual key; NULL for open access / master key
    key_id             UUID,                      -- api_keys.id of the caller, if any
    route              TEXT,                      -- route name the client asked for, NULL for a direct model
    provider           TEXT NOT NULL,             -- provider of the chosen model
    model              TEXT NOT NULL,             -- chosen model
    stream             BOOLEAN NOT NULL,
    candidates         JSONB,                     -- candidates with their predictions at decision time
    propensity         DOUBLE PRECISION,          -- probability the policy gave the chosen model
    checkpoint_version TEXT,                      -- selector checkpoint / policy version that decided
    shadow_choice      TEXT,                      -- what a shadow policy would have chosen
    prompt_hash        TEXT,                      -- hex blake3 of the prompt (dedup, joins to evals)
    embedding          BYTEA,                     -- query embedding, f32 little-endian
    prompt_text        TEXT,                      -- only when `[database] store_prompts = true`
    prompt_tokens      BIGINT,
    completion_tokens  BIGINT,
    cost_usd           DOUBLE PRECISION,
    latency_ms         DOUBLE PRECISION NOT NULL,
    first_token_ms     DOUBLE PRECISION,
    status             INTEGER NOT NULL,          -- HTTP status the client saw (499: client went away)
    error_class        TEXT,
    cache_result       TEXT                       -- e.g. miss, exact, semantic
);
CREATE INDEX request_log_created_at ON request_log (created_at);
CREATE INDEX request_log_tenant_created_at ON request_log (tenant, created_at);

-- Feedback on a request. No foreign key: feedback may arrive while the request's row is still
-- in the writer's batch or in the spill file, and the log is append-only anyway.
CREATE TABLE feedback (
    id          BIGSERIAL PRIMARY KEY,
    request_id  UUID NOT NULL,
    score       DOUBLE PRECISION NOT NULL CHECK (score >= 0 AND score <= 1),
    source      TEXT NOT NULL,
    comment     TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX feedback_request_id ON feedback (request_id);

-- Virtual keys. Only a hash of the key is kept; the key is shown once, at creation.
CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    key_hash    BYTEA NOT NULL UNIQUE,            -- blake3 of the whole key
    tenant      TEXT NOT NULL,
    name        TEXT,
    rpm         BIGINT,
    tpm         BIGINT,
    budget_usd  DOUBLE PRECISION,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
