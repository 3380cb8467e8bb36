//! `GET /dashboard`: a self-contained analytics page (inline SVG charts, no CDN) and the JSON
//! it draws, read from the outcome log with SQL through [`Store`](crate::store::Store).
//!
//! Access is the master key's (`Authorization: Bearer` or `?key=` for a browser tab), or
//! anyone's under open access without keys, as for `POST /admin/reload`.

pub mod sql;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};

use crate::error::Error;
use crate::routing::{LoadedSelector, RoutingEngine};
use crate::store::{Authenticator, Store};

const PAGE: &str = include_str!("page.html");

/// Longest window the API serves (30 days).
pub const MAX_HOURS: i64 = 720;
/// Buckets a window is cut into for the time charts (about).
const TARGET_BUCKETS: i64 = 48;

/// What the dashboard reads: who may see it, the outcome log, the loaded checkpoints.
#[derive(Clone)]
pub struct DashboardState {
    pub auth: Arc<Authenticator>,
    pub store: Store,
    pub routing: Arc<RoutingEngine>,
    /// For the semantic cache's calibrated thresholds (`None`: cache off).
    pub cache: Option<Arc<crate::response_cache::GatewayCache>>,
}

/// The page and its JSON API, with their own state (the dashboard knows nothing of the
/// request path).
pub fn router<S: Clone + Send + Sync + 'static>(state: DashboardState) -> axum::Router<S> {
    axum::Router::new()
        .route("/dashboard", axum::routing::get(page))
        .route("/dashboard/api/summary", axum::routing::get(summary))
        .route("/dashboard/api/timeseries", axum::routing::get(timeseries))
        .route("/dashboard/api/checkpoints", axum::routing::get(checkpoints))
        .with_state(state)
}

/// See [`crate::store::Authenticator::may_administer`]; a `?key=` query parameter counts as
/// a bearer token.
async fn authorize(state: &DashboardState, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<(), Error> {
    let mut headers = headers.clone();
    if let Some(key) = query.get("key").filter(|k| !k.is_empty()) {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::Unauthorized)?;
        headers.insert(header::AUTHORIZATION, value);
    }
    let caller = state.auth.authenticate(&headers).await?;
    if state.auth.may_administer(&caller) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

/// The window (`?hours=`, default 24) and its bucket size in seconds (whole minutes).
fn window(query: &HashMap<String, String>) -> Result<(i64, i64), Error> {
    let hours = match query.get("hours") {
        None => 24,
        Some(text) => match text.trim().parse::<i64>() {
            Ok(h) if (1..=MAX_HOURS).contains(&h) => h,
            _ => return Err(Error::invalid_param("hours", format!("hours must be an integer from 1 to {MAX_HOURS}"))),
        },
    };
    let bucket = ((hours * 3600 / TARGET_BUCKETS) / 60).max(1) * 60;
    Ok((hours, bucket))
}

/// `GET /dashboard`
async fn page(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    authorize(&state, &headers, &query).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Everything is inline; nothing may load from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        PAGE,
    )
        .into_response())
}

/// `GET /dashboard/api/summary?hours=N`: totals, per-model share, cache results, top tenants.
async fn summary(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    authorize(&state, &headers, &query).await?;
    let (hours, _) = window(&query)?;
    let since = Utc::now() - TimeDelta::hours(hours);
    let totals = sql::totals(&state.store, since).await?;
    let models = sql::models(&state.store, since).await?;
    let cache = sql::cache(&state.store, since).await?;
    let tenants = sql::tenants(&state.store, since).await?;
    let count = |kind: &str| -> i64 {
        cache
            .iter()
            .filter(|c| c.cache_result.as_deref() == Some(kind))
            .map(|c| c.requests)
            .sum()
    };
    let hits = count("exact") + count("semantic");
    // An audited candidate looked the cache up and was answered by the upstream.
    let lookups = hits + count("miss") + count("audit");
    // Hit rate over requests that looked the cache up (bypass and unlogged rows excluded).
    let hit_rate = if lookups > 0 { Some(hits as f64 / lookups as f64) } else { None };
    Ok(axum::Json(json!({
        "hours": hours,
        "since": since.to_rfc3339(),
        "totals": totals,
        "models": models,
        "cache": {
            "results": cache,
            "hits": hits,
            "lookups": lookups,
            "hit_rate": hit_rate,
            "calibration": state.cache.as_ref().map(|c| c.calibration()).unwrap_or_default(),
        },
        "tenants": tenants,
    }))
    .into_response())
}

/// `GET /dashboard/api/timeseries?hours=N`: requests, spend and mean latency per time bucket,
/// route and model.
async fn timeseries(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    authorize(&state, &headers, &query).await?;
    let (hours, bucket) = window(&query)?;
    let now = Utc::now();
    let since = now - TimeDelta::hours(hours);
    let rows = sql::timeseries(&state.store, since, bucket).await?;
    Ok(axum::Json(json!({
        "hours": hours,
        "bucket_seconds": bucket,
        "from": since.timestamp() / bucket * bucket,
        "to": now.timestamp(),
        "rows": rows,
    }))
    .into_response())
}

fn checkpoint_view(loaded: Option<Arc<LoadedSelector>>) -> Value {
    match loaded {
        None => Value::Null,
        Some(s) => json!({
            "version": s.version,
            "created_at": s.checkpoint.meta.created_at,
            "candidates": s.checkpoint.meta.candidates,
            "training_data_hash": s.checkpoint.meta.training_data_hash,
            "metrics": s.checkpoint.meta.metrics,
        }),
    }
}

/// Most recent promotion decisions shown.
const PROMOTIONS_SHOWN: usize = 20;

/// The promotion decisions `switchyard learn` / `train --promote` recorded beside the active
/// checkpoint (newest first), and the learn step's last run. Missing files are no decisions.
fn learning_view(checkpoint: Option<&std::path::Path>) -> Value {
    let Some(dir) = checkpoint else { return json!({"promotions": [], "last_learn": null}) };
    let promotions: Vec<Value> = std::fs::read_to_string(training::db::promotion_log(dir))
        .map(|text| {
            let mut records: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            records.reverse();
            records.truncate(PROMOTIONS_SHOWN);
            records
        })
        .unwrap_or_default();
    let last_learn = std::fs::read(training::learn::state_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    json!({"promotions": promotions, "last_learn": last_learn})
}

/// `GET /dashboard/api/checkpoints`: the active, shadow and challenger selectors and their
/// metrics (the challenger with the share of exploring traffic it decides), and
/// the learning loop's promotion decisions.
async fn checkpoints(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    authorize(&state, &headers, &query).await?;
    Ok(axum::Json(json!({
        "active": checkpoint_view(state.routing.active()),
        "shadow": checkpoint_view(state.routing.shadow()),
        "challenger": checkpoint_view(state.routing.challenger()),
        "challenger_share": state.routing.challenger_share(),
        "learning": learning_view(state.routing.checkpoint_path()),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn window_defaults_and_bounds() {
        assert_eq!(window(&q(&[])).ok(), Some((24, 1800)));
        assert_eq!(window(&q(&[("hours", "1")])).ok(), Some((1, 60)));
        assert!(window(&q(&[("hours", "0")])).is_err());
        assert!(window(&q(&[("hours", "721")])).is_err());
        assert!(window(&q(&[("hours", "x")])).is_err());
    }
}
