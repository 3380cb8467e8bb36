//! Response-cache entries in the database, so a restart (or another replica) starts warm.
//!
//! Writes happen off the request path (the gateway spawns them); a failed write costs a
//! future hit, never a request.

use cache::{CachedAnswer, Digest, StoredEntry};
use sqlx::types::Json;
use sqlx::QueryBuilder;

use super::{db_error, embedding_from_bytes, embedding_to_bytes, Store};
use crate::error::Error;

/// Entries loaded at start, newest first, at most this many.
pub const RESTORE_LIMIT: i64 = 200_000;
/// Calibration observations loaded at start, newest first, at most this many.
pub const CALIBRATION_RESTORE_LIMIT: i64 = 100_000;

/// One piece of evidence behind a wrong-hit bound (see `cache::calibration`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CalibrationRecord {
    pub scope: String,
    pub score: f64,
    pub wrong: bool,
    /// `audit` or `feedback`.
    pub evidence: String,
}

#[derive(sqlx::FromRow)]
struct CacheRow {
    exact_key: Vec<u8>,
    scope: Option<Vec<u8>>,
    query_text: Option<String>,
    embedding: Option<Vec<u8>>,
    answer: Json<CachedAnswer>,
    created_at_ms: i64,
    expires_at_ms: i64,
}

impl CacheRow {
    fn into_entry(self) -> Option<(StoredEntry, u64)> {
        let digest = |bytes: Vec<u8>| -> Option<Digest> { bytes.try_into().ok() };
        Some(StoredEntry {
            exact_key: digest(self.exact_key)?,
            scope: match self.scope {
                Some(scope) => Some(digest(scope)?),
                None => None,
            },
            query: self.query_text,
            embedding: self.embedding.as_deref().and_then(embedding_from_bytes),
            answer: self.answer.0,
            expires_at_ms: u64::try_from(self.expires_at_ms).ok()?,
        })
        .zip(u64::try_from(self.created_at_ms).ok())
    }
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The same SQL for both databases; `QueryBuilder` writes each dialect's placeholders.
macro_rules! cache_sql {
    ($db:ty, $pool:expr, save, $entry:expr, $tenant:expr, $now_ms:expr) => {{
        let entry: &StoredEntry = $entry;
        let mut query = QueryBuilder::<$db>::new(
            "INSERT INTO cache_entries (exact_key, scope, tenant, model, query_text, embedding, answer, created_at_ms, expires_at_ms) ",
        );
        query.push_values([entry], |mut values, e| {
            values
                .push_bind(e.exact_key.to_vec())
                .push_bind(e.scope.map(|s| s.to_vec()))
                .push_bind($tenant.clone())
                .push_bind(e.answer.model.clone())
                .push_bind(e.query.clone())
                .push_bind(e.embedding.as_deref().map(embedding_to_bytes))
                .push_bind(Json(e.answer.clone()))
                .push_bind(ms($now_ms))
                .push_bind(ms(e.expires_at_ms));
        });
        query.push(
            " ON CONFLICT (exact_key) DO UPDATE SET scope = excluded.scope, tenant = excluded.tenant, model = excluded.model, \
             query_text = excluded.query_text, embedding = excluded.embedding, answer = excluded.answer, \
             created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms",
        );
        query.build().execute($pool).await.map(|_| ()).map_err(db_error("saving a cache entry"))
    }};
    ($db:ty, $pool:expr, load, $now_ms:expr, $since_ms:expr) => {{
        let mut query = QueryBuilder::<$db>::new(
            "SELECT exact_key, scope, query_text, embedding, answer, created_at_ms, expires_at_ms FROM cache_entries \
             WHERE expires_at_ms > ",
        );
        query.push_bind(ms($now_ms)).push(" AND created_at_ms >= ").push_bind(ms($since_ms));
        query.push(" ORDER BY created_at_ms DESC LIMIT ").push_bind(RESTORE_LIMIT);
        let rows: Vec<CacheRow> = query.build_query_as().fetch_all($pool).await.map_err(db_error("loading the cache"))?;
        Ok(rows.into_iter().filter_map(CacheRow::into_entry).collect())
    }};
    ($db:ty, $pool:expr, save_calibration, $record:expr, $now_ms:expr) => {{
        let record: &CalibrationRecord = $record;
        let mut query = QueryBuilder::<$db>::new("INSERT INTO cache_calibration (scope, score, wrong, evidence, created_at_ms) ");
        query.push_values([record], |mut values, r| {
            values
                .push_bind(r.scope.clone())
                .push_bind(r.score)
                .push_bind(r.wrong)
                .push_bind(r.evidence.clone())
                .push_bind(ms($now_ms));
        });
        query.build().execute($pool).await.map(|_| ()).map_err(db_error("saving cache calibration evidence"))
    }};
    ($db:ty, $pool:expr, load_calibration) => {{
        let mut query = QueryBuilder::<$db>::new(
            "SELECT scope, score, wrong, evidence FROM cache_calibration ORDER BY created_at_ms DESC LIMIT ",
        );
        query.push_bind(CALIBRATION_RESTORE_LIMIT);
        let mut rows: Vec<CalibrationRecord> =
            query.build_query_as().fetch_all($pool).await.map_err(db_error("loading cache calibration evidence"))?;
        rows.reverse();
        Ok(rows)
    }};
    ($db:ty, $pool:expr, purge, $now_ms:expr) => {{
        let mut query = QueryBuilder::<$db>::new("DELETE FROM cache_entries WHERE expires_at_ms <= ");
        query.push_bind(ms($now_ms));
        query.build().execute($pool).await.map(|r| r.rows_affected()).map_err(db_error("purging the cache"))
    }};
}

impl Store {
    /// Saves (or replaces) one entry.
    pub async fn save_cache_entry(&self, entry: &StoredEntry, tenant: Option<&str>, now_ms: u64) -> Result<(), Error> {
        let tenant = tenant.map(str::to_owned);
        match self {
            Store::Postgres(s) => cache_sql!(sqlx::Postgres, s.pool(), save, entry, tenant, now_ms),
            Store::Sqlite(s) => cache_sql!(sqlx::Sqlite, s.pool(), save, entry, tenant, now_ms),
        }
    }

    /// Live entries written at or after `since_ms` (0: all), newest first, at most
    /// [`RESTORE_LIMIT`], each with the time it was written.
    pub async fn load_cache_entries(&self, now_ms: u64, since_ms: u64) -> Result<Vec<(StoredEntry, u64)>, Error> {
        match self {
            Store::Postgres(s) => cache_sql!(sqlx::Postgres, s.pool(), load, now_ms, since_ms),
            Store::Sqlite(s) => cache_sql!(sqlx::Sqlite, s.pool(), load, now_ms, since_ms),
        }
    }

    /// Keeps one observation behind a wrong-hit bound.
    pub async fn save_calibration(&self, record: &CalibrationRecord, now_ms: u64) -> Result<(), Error> {
        match self {
            Store::Postgres(s) => cache_sql!(sqlx::Postgres, s.pool(), save_calibration, record, now_ms),
            Store::Sqlite(s) => cache_sql!(sqlx::Sqlite, s.pool(), save_calibration, record, now_ms),
        }
    }

    /// The newest [`CALIBRATION_RESTORE_LIMIT`] observations, oldest first.
    pub async fn load_calibration(&self) -> Result<Vec<CalibrationRecord>, Error> {
        match self {
            Store::Postgres(s) => cache_sql!(sqlx::Postgres, s.pool(), load_calibration),
            Store::Sqlite(s) => cache_sql!(sqlx::Sqlite, s.pool(), load_calibration),
        }
    }

    /// Deletes expired entries; returns how many.
    pub async fn purge_cache_entries(&self, now_ms: u64) -> Result<u64, Error> {
        match self {
            Store::Postgres(s) => cache_sql!(sqlx::Postgres, s.pool(), purge, now_ms),
            Store::Sqlite(s) => cache_sql!(sqlx::Sqlite, s.pool(), purge, now_ms),
        }
    }
}
