-- Evidence behind the semantic cache's wrong-hit bounds (`[cache] max_wrong_hit_rate`), so a
-- restarted gateway keeps its calibrated thresholds: one row per audited candidate or rated
-- served hit. scope: where the bound was set (`tenant:NAME`, `route:NAME`, `all`); score: the
-- candidate's verifier score; wrong: the audit or the feedback said its answer was wrong;
-- evidence: `audit` or `feedback`; time in Unix ms.
CREATE TABLE cache_calibration (
    scope         TEXT NOT NULL,
    score         DOUBLE PRECISION NOT NULL,
    wrong         BOOLEAN NOT NULL,
    evidence      TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX cache_calibration_created_at ON cache_calibration (created_at_ms);
