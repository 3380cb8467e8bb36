//! The endpoints beside chat completions: the model list, feedback, selector reload,
//! Prometheus metrics and the health checks.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::{read_body, AppState};
use crate::breaker::BreakerState;
use crate::error::Error;
use crate::store::{self, LogStore};

pub async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    state.auth.authenticate(&headers).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], state.models_body.clone()).into_response())
}

/// `GET /metrics`: Prometheus text format. Component gauges are read now.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &crate::metrics::METRICS;
    if let Some(service) = state.routing.embedding_service() {
        let stats = service.stats();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.embed_queue_depth.set(count(stats.queue_depth as u64));
        m.embed_cache_hits.set(count(stats.cache_hits));
        m.embed_rejected.with_label_values(&["queue_full"]).set(count(stats.rejected_queue_full));
        m.embed_rejected.with_label_values(&["deadline"]).set(count(stats.rejected_deadline));
        m.embed_batches.set(count(stats.batches));
        m.embed_texts.set(count(stats.embedded));
    }
    if let Some(cache) = &state.cache {
        let (exact, semantic) = cache.len();
        m.cache_entries.with_label_values(&["exact"]).set(i64::try_from(exact).unwrap_or(i64::MAX));
        m.cache_entries.with_label_values(&["semantic"]).set(i64::try_from(semantic).unwrap_or(i64::MAX));
    }
    for name in state.registry.models.keys() {
        let breaker = state.breakers.state(name);
        for candidate in [BreakerState::Open, BreakerState::HalfOpen] {
            let value = if breaker == candidate { 1.0 } else { 0.0 };
            m.breaker_state.with_label_values(&[name.as_str(), candidate.as_str()]).set(value);
        }
    }
    let log = state.log.stats();
    for (outcome, value) in [
        ("accepted", log.accepted),
        ("written", log.written),
        ("spilled", log.spilled),
        ("replayed", log.replayed),
        ("rejected", log.rejected),
        ("dropped", log.dropped_channel_full + log.dropped_spill_failed),
        ("not_logged", log.not_logged),
    ] {
        m.log_rows.with_label_values(&[outcome]).set(value as f64);
    }
    m.log_queued.set(i64::try_from(log.queued).unwrap_or(i64::MAX));
    for (thread, open) in state.open_connections.per_thread().into_iter().enumerate() {
        m.serving_connections.with_label_values(&[thread.to_string().as_str()]).set(i64::try_from(open).unwrap_or(i64::MAX));
    }
    if let Some((size, idle)) = state.store.pool_usage() {
        m.db_pool_connections.with_label_values(&["open"]).set(f64::from(size));
        m.db_pool_connections.with_label_values(&["idle"]).set(idle as f64);
    }
    m.selector_loaded.reset();
    for (role, version) in [("active", state.routing.active_version()), ("shadow", state.routing.shadow_version())] {
        if let Some(version) = version {
            m.selector_loaded.with_label_values(&[role, version.as_str()]).set(1.0);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}

/// `POST /admin/reload`: reloads the selector checkpoints now. Needs the master key, except
/// with open access and no master key configured (the local demo).
pub async fn reload_selector(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    let caller = state.auth.authenticate(&headers).await?;
    if !state.auth.may_administer(&caller) {
        return Err(Error::Unauthorized);
    }
    state.routing.reload().await?;
    Ok(axum::Json(json!({
        "status": "reloaded",
        "active": state.routing.active_version(),
        "shadow": state.routing.shadow_version(),
    }))
    .into_response())
}

/// `POST /v1/feedback` (see [`store::feedback`]).
pub async fn feedback(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    let caller = state.auth.authenticate(&headers).await?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let tenant = (!caller.master).then_some(caller.tenant.as_deref());
    let feedback = store::feedback::record(&state.store, &state.log, tenant, &bytes).await?;
    if let Some(cache) = &state.cache {
        cache.feedback(feedback.request_id, feedback.score);
    }
    Ok(axum::Json(json!({"status": "recorded", "request_id": feedback.request_id, "score": feedback.score})).into_response())
}

/// Ready when the mock upstream (if any) and the database answer. Requests are still served
/// while the database is down (rows spill to disk), but an instance that cannot log should
/// not be the one a load balancer prefers.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let database = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    if !matches!(database, Ok(Ok(()))) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "database": "down"})))
            .into_response();
    }
    if let Some(url) = &state.mock_health_url {
        let ok = matches!(state.http().reqwest().get(url).send().await, Ok(r) if r.status().is_success());
        if !ok {
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "mock_upstream": "down"})))
                .into_response();
        }
    }
    axum::Json(json!({"status": "ready"})).into_response()
}
