-- Same logical schema as migrations/postgres (see there for what each column means).
CREATE TABLE cache_calibration (
    scope         TEXT NOT NULL,
    score         REAL NOT NULL,
    wrong         INTEGER NOT NULL,
    evidence      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX cache_calibration_created_at ON cache_calibration (created_at_ms);
