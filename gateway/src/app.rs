//! The HTTP application: state, routes, and the request path.
//!
//! `Application::build` binds the listener (port 0 in tests) and `run_until_stopped` serves
//! until a shutdown signal, draining in-flight requests.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::{Config, ProviderKind};
use crate::error::Error;
use crate::limits::Limiter;
use crate::mock::{self, MockOptions};
use crate::openai::{ChatRequest, Usage};
use crate::outcome::RequestOutcome;
use crate::providers::{CallTimeouts, PieceStream, UpstreamResponse};
use crate::registry::{ModelEntry, Registry, Target};
use crate::breaker::{BreakerState, Breakers, Failure};
use crate::response_cache::{hit_response, CachePlan, GatewayCache, HitKind, StreamCapture, HEADER_CACHE};
use crate::routing::{Decision, QueryEmbedding, RequestPolicy, RoutingEngine, Tradeoff};
use crate::sse::data_event;
use crate::store::{self, Authenticator, Caller, LogHandle, LogStore, LogWriter, Store, WriterConfig};

pub const HEADER_REQUEST_ID: &str = "x-switchyard-request-id";
pub const HEADER_MODEL: &str = "x-switchyard-model";
pub const HEADER_ROUTE: &str = "x-switchyard-route";
/// How a route's model was chosen: `selected`, `explored`, `shed` or `default`.
pub const HEADER_DECISION: &str = "x-switchyard-decision";
/// Time spent embedding and scoring, in ms (routes only).
pub const HEADER_DECISION_MS: &str = "x-switchyard-decision-ms";
/// Per-request trade-off: a preset or `quality=1,cost=0.5,latency=0.1`.
pub const HEADER_TRADEOFF: &str = "x-switchyard-tradeoff";
/// Per-request ceiling on the predicted cost of the answer, in USD.
pub const HEADER_MAX_COST: &str = "x-switchyard-max-cost-usd";
/// Per-request first-byte timeout in ms; clamped to the route's (or server's) value.
pub const HEADER_TIMEOUT: &str = "x-switchyard-timeout-ms";

/// Everything a request needs, built once at start.
pub struct AppState {
    pub registry: Registry,
    pub http: reqwest::Client,
    pub timeouts: CallTimeouts,
    pub max_body_bytes: usize,
    /// Open access, master key or virtual keys (cached lookups).
    pub auth: Authenticator,
    /// Outcome log, feedback and keys.
    pub store: Store,
    /// Where finished requests send their outcome row; never waits.
    pub log: LogHandle,
    /// Taken by [`Application::run_until`] to flush the log at shutdown.
    log_writer: std::sync::Mutex<Option<LogWriter>>,
    /// Circuit breakers per model.
    pub breakers: Breakers,
    /// Embedder, selector checkpoints and policy for routes.
    pub routing: Arc<RoutingEngine>,
    /// Response cache (`None` when `[cache]` turns both tiers off).
    pub cache: Option<Arc<GatewayCache>>,
    /// Per-key and per-tenant limits.
    pub limits: Arc<Limiter>,
    /// Cancelled when the shutdown grace is over: open streams end, and requests still
    /// waiting for an upstream answer are answered 503.
    cut_in_flight: tokio_util::sync::CancellationToken,
    shutdown_grace: Duration,
    /// `/v1/models` body, rendered once.
    models_body: Bytes,
    /// Health URL of the in-process mock, checked by `/ready`.
    mock_health_url: Option<String>,
}

impl AppState {
    pub async fn build(config: &Config) -> Result<Self, Error> {
        let needs_mock = config
            .providers
            .values()
            .any(|p| p.kind == ProviderKind::Mock && p.base_url.is_none());
        let mock_addr = if needs_mock {
            let mock_config = config.providers.values().find(|p| p.kind == ProviderKind::Mock);
            let options = MockOptions {
                first_token_ms: mock_config.map(|p| p.mock_first_token_ms).unwrap_or(0),
                per_token_ms: mock_config.map(|p| p.mock_per_token_ms).unwrap_or(0),
                ..MockOptions::default()
            };
            let addr = mock::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), options).await?;
            tracing::info!(%addr, "in-process mock upstream listening");
            Some(addr)
        } else {
            None
        };
        let registry = Registry::build(config, mock_addr)?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.server.connect_timeout())
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let master_key = config
            .server
            .master_key_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|key| !key.is_empty());
        let store = Store::open(&config.database)?;
        store.migrate().await?;
        let log_writer = LogWriter::spawn(store.clone(), WriterConfig::from_config(&config.database))?;
        let open = config.auth.open.unwrap_or(master_key.is_none());
        let auth = Authenticator::new(
            store.clone(),
            open,
            master_key,
            Duration::from_millis(config.auth.key_cache_ttl_ms),
            Duration::from_millis(config.auth.key_stale_ttl_ms),
        );
        tracing::info!(database = store.backend(), open_access = open, "outcome log ready");
        let routing = RoutingEngine::start(config.router.clone(), &registry.models).await?;
        spawn_reload_on_sighup(&routing);
        let cache = GatewayCache::build(config, &store, &routing).await?;
        let limits = Arc::new(Limiter::from_config(&config.limits)?);
        tracing::info!(backend = limits.backend_name(), "limits ready");
        Ok(Self {
            cache,
            limits,
            cut_in_flight: tokio_util::sync::CancellationToken::new(),
            shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
            breakers: Breakers::new(
                config.server.breaker_failures,
                Duration::from_millis(config.server.breaker_open_ms),
            ),
            routing,
            models_body: models_body(config),
            registry,
            http,
            timeouts: CallTimeouts {
                first_byte: config.server.first_byte_timeout(),
                body: config.server.request_timeout(),
            },
            max_body_bytes: config.server.max_body_bytes,
            auth,
            store,
            log: log_writer.handle(),
            log_writer: std::sync::Mutex::new(Some(log_writer)),
            mock_health_url: mock_addr.map(|addr| format!("http://{addr}/health")),
        })
    }

    async fn authorize(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        self.auth.authenticate(headers).await
    }

    /// Stops the log writer after the server has drained: queued rows are written (or
    /// spilled). Later calls do nothing.
    pub async fn shutdown_log(&self) {
        let writer = self
            .log_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            writer.shutdown().await;
        }
    }
}

fn models_body(config: &Config) -> Bytes {
    let mut data: Vec<serde_json::Value> = config
        .models
        .iter()
        .map(|(name, model)| json!({"id": name, "object": "model", "created": 0, "owned_by": model.provider}))
        .collect();
    data.extend(
        config
            .routes
            .keys()
            .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "switchyard-route"})),
    );
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/feedback", post(feedback))
        .route("/admin/reload", post(reload_selector))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/api/summary", get(crate::dashboard::summary))
        .route("/dashboard/api/timeseries", get(crate::dashboard::timeseries))
        .route("/dashboard/api/checkpoints", get(crate::dashboard::checkpoints))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        // The body limit is enforced by `read_body` so the 413 carries an OpenAI error body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    state.authorize(&headers).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], state.models_body.clone()).into_response())
}

/// `GET /metrics`: Prometheus text format. Component gauges are read now.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
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
async fn reload_selector(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    let caller = state.authorize(&headers).await?;
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
async fn feedback(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    let caller = state.authorize(&headers).await?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let tenant = (!caller.master).then_some(caller.tenant.as_deref());
    let feedback = store::feedback::record(&state.store, &state.log, tenant, &bytes).await?;
    Ok(axum::Json(json!({"status": "recorded", "request_id": feedback.request_id, "score": feedback.score})).into_response())
}

/// Ready when the mock upstream (if any) and the database answer. Requests are still served
/// while the database is down (rows spill to disk), but an instance that cannot log should
/// not be the one a load balancer prefers.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let database = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    if !matches!(database, Ok(Ok(()))) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "database": "down"})))
            .into_response();
    }
    if let Some(url) = &state.mock_health_url {
        let ok = matches!(state.http.get(url).send().await, Ok(r) if r.status().is_success());
        if !ok {
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "mock_upstream": "down"})))
                .into_response();
        }
    }
    axum::Json(json!({"status": "ready"})).into_response()
}

/// Reads the body up to the configured limit.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(Error::PayloadTooLarge { limit })
            } else {
                Err(Error::invalid(format!("could not read request body: {e}")))
            }
        }
    }
}

/// socket → auth → parse → exact cache → embed (once) → semantic cache → selector/policy →
/// provider (fallback, breakers) → stream to client → outcome row → cache insert.
async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let started = Instant::now();
    let caller = state.authorize(&headers).await?;
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > state.max_body_bytes)
    {
        return Err(Error::PayloadTooLarge { limit: state.max_body_bytes });
    }
    let bytes = read_body(body, state.max_body_bytes).await?;
    let request = ChatRequest::parse(&bytes)?;
    let target = state.registry.resolve(&request.model)?;
    let request_id = Uuid::now_v7();
    // From here on the request is for a configured model or route: a refusal leaves a row.
    let refused = |error: Error| {
        log_refused(&state, &target, &request, &caller, request_id, &error, started);
        error
    };
    let admission = state.limits.admit(&caller).await.map_err(refused)?;
    let route = match &target {
        Target::Route(route) => Some(route.clone()),
        Target::Model(_) => None,
    };
    let plan = state.cache.as_ref().map(|c| c.plan(&request, caller.tenant.as_deref(), route.is_some(), &headers));

    if let (Some(cache), Some(plan)) = (&state.cache, &plan) {
        if let Some(answer) = cache.lookup_exact(plan).await {
            if let Some(response) = hit_response(&answer, &request, &HitKind::Exact) {
                return Ok(serve_hit(response, "exact", &answer, &target, &request, &caller, request_id, &state, started));
            }
        }
    }

    let policy = if route.is_some() { request_policy(&headers).map_err(refused)? } else { RequestPolicy::default() };
    let timeouts = request_timeouts(state.timeouts, route.as_deref(), &headers).map_err(refused)?;
    let wants_semantic = plan.as_ref().is_some_and(|p| p.semantic);
    // What the embedder, the semantic cache and the log look at, extracted once.
    let query_text = request.last_user_text();
    let decision_started = Instant::now();
    let embedding = if (route.is_some() && state.routing.has_selector()) || wants_semantic {
        state.routing.embed_query(&query_text, decision_started).await
    } else {
        QueryEmbedding::Unavailable
    };
    let query_vector = match &embedding {
        QueryEmbedding::Ready(vector) => Some(vector.clone()),
        _ => None,
    };
    if let (Some(cache), Some(plan), Some(vector), true) = (&state.cache, &plan, &query_vector, wants_semantic) {
        if let Ok(hit) = cache.lookup_semantic(plan, vector, &query_text) {
            if let Some(response) = hit_response(&hit.answer, &request, &HitKind::Semantic(&hit)) {
                return Ok(serve_hit(response, "semantic", &hit.answer, &target, &request, &caller, request_id, &state, started));
            }
        }
    }

    let decision = match &target {
        Target::Model(model) => Decision::fixed(model.clone()),
        Target::Route(route) => state.routing.decide_with(route, &request, policy, decision_started, embedding),
    };
    let route_name = route.as_ref().map(|r| r.name.clone());
    let mut outcome = RequestOutcome::new(request_id, route_name.clone(), decision.chosen(), request.stream)
        .log_to(state.log.clone())
        .charge_limits(admission);
    record_decision(&mut outcome, &decision);
    outcome.tenant = caller.tenant;
    outcome.key_id = caller.key_id;
    if outcome.embedding.is_none() {
        outcome.embedding = query_vector.clone();
    }
    if state.log.stores_prompts() {
        outcome.prompt_text = Some(query_text.clone());
    }
    let cache_status = plan.as_ref().map(|p| if p.eligibility.read { "miss" } else { "bypass" });
    outcome.cache_result = cache_status;

    let (model, upstream) = match call_with_fallback(&state, &decision, &request, &headers, timeouts, &mut outcome).await {
        Ok(answered) => answered,
        Err(error) => {
            outcome.finish_error(&error, started);
            return Err(error);
        }
    };
    // What the cache needs to keep this answer once it is complete.
    let keep = match (&state.cache, plan) {
        (Some(cache), Some(plan)) if plan.eligibility.write => Some(CacheWrite {
            cache: cache.clone(),
            plan,
            embedding: query_vector,
            query: query_text,
        }),
        _ => None,
    };
    let mut response = match upstream {
        UpstreamResponse::Json { body, usage } => {
            if state.log.stores_prompts() {
                outcome.answer_text = crate::openai::answer_text(&body);
            }
            outcome.finish_ok(usage, &model, started, None);
            if let Some(keep) = keep {
                if let Some(answer) = cache::CachedAnswer::from_json(&model.name, &body) {
                    keep.store(answer);
                }
            }
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        UpstreamResponse::Stream(pieces) => {
            let pieces = crate::shutdown::cut_on(pieces, state.cut_in_flight.clone());
            let stream = client_stream(pieces, request.client_wants_usage, model.clone(), outcome, started, keep);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(stream))
                .map_err(|e| Error::Internal(e.to_string()))?
        }
    };
    let headers = response.headers_mut();
    set_identity_headers(headers, request_id, &model.name, route_name.as_deref());
    if route_name.is_some() {
        headers.insert(HEADER_DECISION, HeaderValue::from_static(decision.kind.as_str()));
        if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", decision.decision_ms)) {
            headers.insert(HEADER_DECISION_MS, value);
        }
    }
    if let Some(status) = cache_status {
        headers.insert(HEADER_CACHE, HeaderValue::from_static(status));
    }
    Ok(response)
}

fn set_identity_headers(headers: &mut HeaderMap, request_id: Uuid, model: &str, route: Option<&str>) {
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        headers.insert(HEADER_REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert(HEADER_MODEL, value);
    }
    if let Some(value) = route.and_then(|r| HeaderValue::from_str(r).ok()) {
        headers.insert(HEADER_ROUTE, value);
    }
}

/// An answer to keep in the cache once it is complete.
struct CacheWrite {
    cache: Arc<GatewayCache>,
    plan: CachePlan,
    embedding: Option<router_model::Embedding>,
    query: String,
}

impl CacheWrite {
    fn store(self, answer: cache::CachedAnswer) {
        self.cache.store(&self.plan, answer, self.embedding.as_deref(), self.query);
    }
}

/// The outcome row of a request the gateway answers without an upstream call, under the
/// model it asked for (a route's default for a route); `provider` says who answered.
fn own_answer_outcome(
    state: &AppState,
    target: &Target,
    request: &ChatRequest,
    caller: &Caller,
    request_id: Uuid,
    provider: &str,
) -> RequestOutcome {
    let (route, nominal) = match target {
        Target::Model(model) => (None, model),
        Target::Route(route) => (Some(route.name.clone()), &route.default),
    };
    let mut outcome = RequestOutcome::new(request_id, route, nominal, request.stream).log_to(state.log.clone());
    outcome.provider = provider.into();
    outcome.tenant = caller.tenant.clone();
    outcome.key_id = caller.key_id;
    outcome
}

/// Records a request refused before any upstream call (a limit, a bad routing header), with
/// provider `gateway`.
fn log_refused(
    state: &AppState,
    target: &Target,
    request: &ChatRequest,
    caller: &Caller,
    request_id: Uuid,
    error: &Error,
    started: Instant,
) {
    own_answer_outcome(state, target, request, caller, request_id, "gateway").finish_error(error, started);
}

/// Answers from the cache: logs the hit (no upstream, no cost) and sets the usual headers.
#[allow(clippy::too_many_arguments)]
fn serve_hit(
    mut response: Response,
    kind: &'static str,
    answer: &cache::CachedAnswer,
    target: &Target,
    request: &ChatRequest,
    caller: &Caller,
    request_id: Uuid,
    state: &AppState,
    started: Instant,
) -> Response {
    let mut outcome = own_answer_outcome(state, target, request, caller, request_id, "cache");
    let route = outcome.route.clone();
    outcome.model = answer.model.clone();
    outcome.cache_result = Some(kind);
    if state.log.stores_prompts() {
        outcome.prompt_text = Some(request.last_user_text());
    }
    outcome.finish_cache_hit(started);
    let headers = response.headers_mut();
    set_identity_headers(headers, request_id, &answer.model, route.as_deref());
    if route.is_some() {
        headers.insert(HEADER_DECISION, HeaderValue::from_static("cache"));
    }
    response
}

/// SIGHUP reloads the selector checkpoints (the usual "reload your config" signal).
fn spawn_reload_on_sighup(routing: &Arc<RoutingEngine>) {
    #[cfg(unix)]
    {
        let routing = Arc::downgrade(routing);
        tokio::spawn(async move {
            let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hangups.recv().await.is_some() {
                let Some(routing) = routing.upgrade() else { break };
                tracing::info!("SIGHUP: reloading selector checkpoints");
                if let Err(e) = routing.reload().await {
                    tracing::error!(error = %e, "selector reload failed; keeping the current checkpoint");
                }
            }
        });
    }
}

/// Sends the request to the decision's models in ranking order until one answers. Only
/// failures that happen before anything reached the client (connection errors, timeouts to
/// the first byte, 5xx, 429) move on to the next model; a model whose breaker is open is
/// skipped. Every failed attempt is recorded in the outcome's decision details.
async fn call_with_fallback(
    state: &AppState,
    decision: &Decision,
    request: &ChatRequest,
    headers: &HeaderMap,
    timeouts: CallTimeouts,
    outcome: &mut RequestOutcome,
) -> Result<(Arc<ModelEntry>, UpstreamResponse), Error> {
    let mut attempts: Vec<serde_json::Value> = Vec::new();
    let mut last_error = None;
    for model in &decision.ranking {
        let permit = match &model.bulkhead {
            Some(bulkhead) => match bulkhead.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    attempts.push(json!({"model": model.name, "skipped": "bulkhead_full"}));
                    continue;
                }
            },
            None => None,
        };
        if !state.breakers.try_acquire(&model.name) {
            attempts.push(json!({"model": model.name, "skipped": "breaker_open_or_cooldown"}));
            continue;
        }
        outcome.model = model.name.clone();
        outcome.provider = model.provider_name.clone();
        let attempt_started = Instant::now();
        let result = tokio::select! {
            result = model.provider.chat(&state.http, request, &model.upstream_model, headers, timeouts) => result,
            // The shutdown grace is over: answer now (503) rather than be dropped unlogged.
            () = state.cut_in_flight.cancelled() => {
                state.breakers.release(&model.name);
                record_attempts(outcome, attempts);
                return Err(Error::ShuttingDown);
            }
        };
        match result {
            Ok(upstream) => {
                state.breakers.record_success(&model.name);
                // A stream keeps its provider's bulkhead permit until it ends or is dropped.
                let upstream = match (upstream, permit) {
                    (UpstreamResponse::Stream(pieces), Some(permit)) => UpstreamResponse::Stream(Box::pin(
                        futures_util::StreamExt::map(pieces, move |piece| {
                            let _held = &permit;
                            piece
                        }),
                    )),
                    (upstream, _) => upstream,
                };
                record_attempts(outcome, attempts);
                return Ok((model.clone(), upstream));
            }
            Err(error) => {
                let failure = Failure::of(&error);
                attempts.push(json!({
                    "model": model.name,
                    "error_class": error.class(),
                    "latency_ms": attempt_started.elapsed().as_secs_f64() * 1e3,
                }));
                match failure {
                    Some(failure) => state.breakers.record_failure(&model.name, failure),
                    None => {
                        // The request itself is at fault: another model would refuse it too.
                        state.breakers.release(&model.name);
                        record_attempts(outcome, attempts);
                        return Err(error);
                    }
                }
                tracing::debug!(model = %model.name, error = %error, "upstream failed; trying the next model");
                last_error = Some(error);
            }
        }
    }
    record_attempts(outcome, attempts);
    Err(last_error.unwrap_or_else(|| Error::Unavailable("every candidate model is cooling down, its circuit is open or its provider is at max_concurrent".into())))
}

fn record_attempts(outcome: &mut RequestOutcome, attempts: Vec<serde_json::Value>) {
    if attempts.is_empty() {
        return;
    }
    let details = outcome.candidates.get_or_insert_with(|| json!({}));
    if let Some(object) = details.as_object_mut() {
        object.insert("failed_attempts".into(), serde_json::Value::Array(attempts));
    }
}

/// The upstream timeouts for one request: the route's overrides of the server's, then the
/// client's `x-switchyard-timeout-ms`, which may shorten the first-byte wait but never
/// lengthen it (a client must not hold upstream connections longer than the operator allows).
fn request_timeouts(server: CallTimeouts, route: Option<&crate::registry::RouteEntry>, headers: &HeaderMap) -> Result<CallTimeouts, Error> {
    let mut timeouts = server;
    if let Some(route) = route {
        timeouts.first_byte = route.first_byte_timeout.unwrap_or(timeouts.first_byte);
        timeouts.body = route.request_timeout.unwrap_or(timeouts.body);
    }
    if let Some(value) = headers.get(HEADER_TIMEOUT) {
        let asked = value
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| Error::invalid_param(HEADER_TIMEOUT, format!("{HEADER_TIMEOUT} must be a positive whole number of milliseconds")))?;
        timeouts.first_byte = timeouts.first_byte.min(Duration::from_millis(asked));
    }
    Ok(timeouts)
}

/// Reads the per-request routing headers.
fn request_policy(headers: &HeaderMap) -> Result<RequestPolicy, Error> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let tradeoff = text(HEADER_TRADEOFF)
        .map(|t| crate::routing::parse_tradeoff(t, Tradeoff::BALANCED))
        .transpose()?;
    let max_cost_usd = match text(HEADER_MAX_COST) {
        Some(t) => match t.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => return Err(Error::invalid(format!("{HEADER_MAX_COST} must be a non-negative number"))),
        },
        None => None,
    };
    Ok(RequestPolicy { tradeoff, max_cost_usd })
}

/// Copies what the router decided into the outcome row. The `candidates` column holds the
/// whole decision: how it was made, the trade-off, every candidate's predictions, and the
/// shadow checkpoint's version.
fn record_decision(outcome: &mut RequestOutcome, decision: &Decision) {
    outcome.propensity = Some(decision.propensity);
    outcome.checkpoint_version = decision.checkpoint_version.clone();
    outcome.shadow_choice = decision.shadow_choice.clone();
    outcome.embedding = decision.embedding.clone();
    if outcome.route.is_some() {
        outcome.candidates = Some(json!({
            "decision": decision.kind.as_str(),
            "tradeoff": decision.tradeoff.map(|t| t.to_string()),
            "decision_ms": decision.decision_ms,
            "scores": decision.candidates,
            "shadow_version": decision.shadow_version,
        }));
    }
}

/// Forwards pieces to the client as they arrive, drops the usage chunk the client did not
/// ask for, and records the outcome when the stream ends (or breaks).
fn client_stream(
    mut pieces: PieceStream,
    client_wants_usage: bool,
    model: Arc<ModelEntry>,
    mut outcome: RequestOutcome,
    started: Instant,
    keep: Option<CacheWrite>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    async_stream::stream! {
        let mut capture = keep.as_ref().map(|_| StreamCapture::new());
        let mut usage: Option<Usage> = None;
        let mut first_token_ms: Option<f64> = None;
        // Events that are ready together (a fast upstream sends many at once) leave as one
        // body frame: one write to the client instead of one per event.
        let mut ready: Vec<Bytes> = Vec::new();
        let mut ended = false;
        while !ended {
            let Some(mut next) = pieces.next().await else { break };
            loop {
                match next {
                    Ok(piece) => {
                        if piece.usage.is_some() {
                            usage = piece.usage;
                        }
                        if piece.has_content && first_token_ms.is_none() {
                            first_token_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                        }
                        if let Some(capture) = capture.as_mut() {
                            capture.push(&piece.bytes);
                        }
                        if !(piece.usage_only && !client_wants_usage) {
                            ready.push(piece.bytes);
                        }
                    }
                    Err(error) => {
                        // Headers are gone already: end the stream with an error event.
                        if let Some(frame) = coalesce(&mut ready) {
                            yield Ok(frame);
                        }
                        outcome.finish_error(&error, started);
                        yield Ok(data_event(&error.body().to_string()));
                        return;
                    }
                }
                if ready.iter().map(Bytes::len).sum::<usize>() >= MAX_COALESCED_BYTES {
                    break;
                }
                // The upstream client hands over one HTTP chunk at a time: let its connection
                // task run once, then take what it has (nothing, for an upstream generating
                // tokens in real time; the rest of a burst, for a fast one).
                let mut polled = futures_util::FutureExt::now_or_never(pieces.next());
                for _ in 0..COALESCE_YIELDS {
                    if polled.is_some() {
                        break;
                    }
                    tokio::task::yield_now().await;
                    polled = futures_util::FutureExt::now_or_never(pieces.next());
                }
                match polled {
                    Some(Some(piece)) => next = piece,
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if let Some(frame) = coalesce(&mut ready) {
                yield Ok(frame);
            }
        }
        outcome.finish_ok(usage, &model, started, first_token_ms);
        if let (Some(keep), Some(capture)) = (keep, capture) {
            if let Some(answer) = capture.finish(&model.name) {
                keep.store(answer);
            }
        }
    }
}

/// How many times a stream lets other tasks run while waiting to add an event to a frame:
/// the upstream's connection task needs a turn per event it hands over.
const COALESCE_YIELDS: usize = 4;

/// Largest body frame built from events that were ready together.
const MAX_COALESCED_BYTES: usize = 64 * 1024;

/// The events in `ready` as one frame (without a copy when there is one), emptying it.
fn coalesce(ready: &mut Vec<Bytes>) -> Option<Bytes> {
    match ready.len() {
        0 => None,
        1 => ready.pop(),
        _ => {
            let mut frame = bytes::BytesMut::with_capacity(ready.iter().map(Bytes::len).sum());
            for event in ready.drain(..) {
                frame.extend_from_slice(&event);
            }
            Some(frame.freeze())
        }
    }
}

/// A bound server, ready to run.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
}

impl Application {
    pub async fn build(config: &Config, listen: Option<SocketAddr>) -> Result<Self, Error> {
        let state = Arc::new(AppState::build(config).await?);
        let addr = listen.unwrap_or(config.server.listen);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Self {
            addr,
            listener,
            router: router(state.clone()),
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state the routes share (store, log writer, auth), for tests and tools.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, lets in-flight requests finish for up to
    /// `[server] shutdown_grace_ms`, cuts the streams still open and answers 503 to requests
    /// still waiting upstream (both logged), then flushes the outcome log.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        /// How long cut streams get to send their last event and close.
        const AFTER_CUT: Duration = Duration::from_secs(2);
        let listener = self.listener.tap_io(|tcp| {
            // Stream chunks go out as they come: no Nagle delay waiting on the client's ACK.
            let _ = tcp.set_nodelay(true);
        });
        let (requested, shutdown_requested) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, self.router).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = requested.send(());
        });
        let mut server = std::pin::pin!(server.into_future());
        let grace = self.state.shutdown_grace;
        let grace_over = async move {
            if shutdown_requested.await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!(grace_ms = grace.as_millis(), "shutting down: draining in-flight requests");
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = &mut server => served,
            () = grace_over => {
                tracing::warn!("shutdown grace over; cutting the streams and upstream calls still open");
                self.state.cut_in_flight.cancel();
                match tokio::time::timeout(AFTER_CUT, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!("connections still open after the cut; closing without them");
                        Ok(())
                    }
                }
            }
        };
        let served = served.map_err(|e| Error::Internal(format!("server error: {e}")));
        self.state.shutdown_log().await;
        served
    }
}
