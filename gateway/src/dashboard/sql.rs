//! The dashboard's queries over `request_log`. One SQL text serves Postgres and SQLite except
//! for the time bucket (the dialects share no epoch function) and the placeholders; JSON is read
//! with `->` / `->>`, which both have (SQLite since 3.38). A window is found through the
//! primary key (ids are UUIDv7, in arrival order; see [`crate::store::first_id_of_window`]),
//! the log's only index, and trimmed exactly by `created_at`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Database, FromRow};

use crate::error::Error;
use crate::store::Store;

/// One (time bucket, route, model) cell of the traffic chart.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct BucketRow {
    /// Bucket start, seconds since the epoch (UTC).
    pub t: i64,
    pub route: Option<String>,
    pub model: String,
    pub requests: i64,
    pub cost_usd: f64,
    pub mean_latency_ms: f64,
}

/// Requests and spend per model over the window.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct ModelRow {
    pub model: String,
    pub requests: i64,
    pub cost_usd: f64,
    pub mean_latency_ms: f64,
}

/// Rows per `cache_result` (`exact`, `semantic`, `miss`, `bypass`; `None` for rows logged
/// without one).
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct CacheRow {
    pub cache_result: Option<String>,
    pub requests: i64,
}

/// Spend per tenant (`None`: open access, no tenant).
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct TenantRow {
    pub tenant: Option<String>,
    pub requests: i64,
    pub cost_usd: f64,
}

/// Whole-window counts.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct Totals {
    pub requests: i64,
    pub cost_usd: f64,
    pub mean_latency_ms: f64,
    /// Status 400 and above (499: the client went away).
    pub errors: i64,
    /// Rows whose decision records at least one failed upstream attempt.
    pub fallbacks: i64,
    /// Routed rows whose embedder missed its deadline (the route's default model served).
    pub shed: i64,
}

/// Top tenants shown.
pub const TOP_TENANTS: i64 = 10;

const TIMESERIES: &str = "SELECT {bucket} AS t, route, model, COUNT(*) AS requests, \
     COALESCE(SUM(cost_usd), 0.0) AS cost_usd, COALESCE(AVG(latency_ms), 0.0) AS mean_latency_ms \
     FROM request_log WHERE {window} GROUP BY 1, route, model ORDER BY 1, route, model";

const MODELS: &str = "SELECT model, COUNT(*) AS requests, COALESCE(SUM(cost_usd), 0.0) AS cost_usd, \
     COALESCE(AVG(latency_ms), 0.0) AS mean_latency_ms \
     FROM request_log WHERE {window} GROUP BY model ORDER BY requests DESC, model";

const CACHE: &str = "SELECT cache_result, COUNT(*) AS requests FROM request_log \
     WHERE {window} GROUP BY cache_result ORDER BY requests DESC";

const TENANTS: &str = "SELECT tenant, COUNT(*) AS requests, COALESCE(SUM(cost_usd), 0.0) AS cost_usd \
     FROM request_log WHERE {window} GROUP BY tenant \
     ORDER BY cost_usd DESC, requests DESC LIMIT {limit}";

const TOTALS: &str = "SELECT COUNT(*) AS requests, COALESCE(SUM(cost_usd), 0.0) AS cost_usd, \
     COALESCE(AVG(latency_ms), 0.0) AS mean_latency_ms, \
     COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS errors, \
     COALESCE(SUM(CASE WHEN candidates -> 'failed_attempts' IS NOT NULL THEN 1 ELSE 0 END), 0) AS fallbacks, \
     COALESCE(SUM(CASE WHEN candidates ->> 'decision' = 'shed' THEN 1 ELSE 0 END), 0) AS shed \
     FROM request_log WHERE {window}";

/// Fills in the dialect's window filter (its placeholders) and bucket expression.
/// `bucket_seconds` is an integer the caller computed, never client text, so formatting it
/// into the statement is safe.
fn render(template: &str, postgres: bool, bucket_seconds: i64) -> String {
    let (window, bucket) = if postgres {
        (
            "id >= $1 AND created_at >= $2",
            format!("CAST(FLOOR(EXTRACT(EPOCH FROM created_at) / {b}) AS BIGINT) * {b}", b = bucket_seconds),
        )
    } else {
        (
            "id >= ?1 AND created_at >= ?2",
            format!("(CAST(strftime('%s', created_at) AS INTEGER) / {b}) * {b}", b = bucket_seconds),
        )
    };
    template
        .replace("{window}", window)
        .replace("{bucket}", &bucket)
        .replace("{limit}", &TOP_TENANTS.to_string())
}

fn db_error(source: sqlx::Error) -> Error {
    Error::Database {
        context: "reading the outcome log for the dashboard",
        source: std::sync::Arc::new(source),
    }
}

async fn fetch<T>(store: &Store, template: &str, since: DateTime<Utc>, bucket_seconds: i64) -> Result<Vec<T>, Error>
where
    T: for<'r> FromRow<'r, <sqlx::Postgres as Database>::Row>
        + for<'r> FromRow<'r, <sqlx::Sqlite as Database>::Row>
        + Send
        + Unpin,
{
    let first_id = crate::store::first_id_of_window(since);
    match store {
        Store::Postgres(s) => {
            let sql = render(template, true, bucket_seconds);
            sqlx::query_as::<_, T>(&sql).bind(first_id).bind(since).fetch_all(s.pool()).await
        }
        Store::Sqlite(s) => {
            let sql = render(template, false, bucket_seconds);
            sqlx::query_as::<_, T>(&sql).bind(first_id).bind(since).fetch_all(s.pool()).await
        }
    }
    .map_err(db_error)
}

/// Requests, spend and mean latency per bucket, route and model since `since`.
pub async fn timeseries(store: &Store, since: DateTime<Utc>, bucket_seconds: i64) -> Result<Vec<BucketRow>, Error> {
    fetch(store, TIMESERIES, since, bucket_seconds.max(1)).await
}

pub async fn models(store: &Store, since: DateTime<Utc>) -> Result<Vec<ModelRow>, Error> {
    fetch(store, MODELS, since, 1).await
}

pub async fn cache(store: &Store, since: DateTime<Utc>) -> Result<Vec<CacheRow>, Error> {
    fetch(store, CACHE, since, 1).await
}

pub async fn tenants(store: &Store, since: DateTime<Utc>) -> Result<Vec<TenantRow>, Error> {
    fetch(store, TENANTS, since, 1).await
}

pub async fn totals(store: &Store, since: DateTime<Utc>) -> Result<Totals, Error> {
    let rows: Vec<Totals> = fetch(store, TOTALS, since, 1).await?;
    Ok(rows.into_iter().next().unwrap_or(Totals {
        requests: 0,
        cost_usd: 0.0,
        mean_latency_ms: 0.0,
        errors: 0,
        fallbacks: 0,
        shed: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect() {
        let pg = render(TIMESERIES, true, 300);
        assert!(pg.contains("id >= $1 AND created_at >= $2") && pg.contains("EXTRACT(EPOCH") && pg.contains("/ 300)"), "{pg}");
        let lite = render(TIMESERIES, false, 300);
        assert!(lite.contains("id >= ?1 AND created_at >= ?2") && lite.contains("strftime('%s'"), "{lite}");
        assert!(!render(TENANTS, false, 1).contains('{'));
    }

    /// The log has no index on `created_at` (each one is paid by every logged request): every
    /// window query must find its rows through the primary key, not scan the table.
    #[tokio::test]
    async fn sqlite_reads_every_window_through_the_id_index() {
        use crate::store::LogStore;
        let store = Store::connect("sqlite::memory:", 1).expect("in-memory store");
        store.migrate().await.expect("migrate");
        let Store::Sqlite(lite) = &store else { panic!("an SQLite store") };
        let since = Utc::now() - chrono::TimeDelta::hours(24);
        for template in [TIMESERIES, MODELS, CACHE, TENANTS, TOTALS] {
            let sql = format!("EXPLAIN QUERY PLAN {}", render(template, false, 1800));
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&sql)
                .bind(crate::store::first_id_of_window(since))
                .bind(since)
                .fetch_all(lite.pool())
                .await
                .expect("query plan");
            let steps: Vec<&str> = plan.iter().map(|step| step.3.as_str()).collect();
            assert!(
                steps.iter().any(|s| s.starts_with("SEARCH request_log USING INDEX sqlite_autoindex_request_log_1 (id>?)")),
                "{template}: {steps:?}"
            );
            assert!(!steps.iter().any(|s| s.starts_with("SCAN request_log")), "{template}: {steps:?}");
        }
    }
}
