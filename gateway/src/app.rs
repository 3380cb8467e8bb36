//! The HTTP application: state built once at start, the routes, and serving until shutdown.
//! The chat request path is [`crate::chat`]; the other endpoints are [`crate::handlers`].
//!
//! `Application::build` binds the listener (port 0 in tests) and `run_until_stopped` serves
//! until a shutdown signal, draining in-flight requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breakers;
use crate::config::{Config, ProviderKind};
use crate::dashboard::DashboardState;
use crate::error::Error;
use crate::limits::Limiter;
use crate::mock::{self, MockOptions};
use crate::providers::{CallTimeouts, UpstreamClient};
use crate::registry::Registry;
use crate::response_cache::GatewayCache;
use crate::routing::RoutingEngine;
use crate::serving::{self, OpenConnections};
use crate::store::{Authenticator, LogHandle, LogStore, LogWriter, Store, WriterConfig};
use crate::tasks::Background;

pub use crate::chat::{
    HEADER_DECISION, HEADER_DECISION_MS, HEADER_MAX_COST, HEADER_MODEL, HEADER_REQUEST_ID, HEADER_ROUTE, HEADER_TIMEOUT,
    HEADER_TRADEOFF,
};

/// Everything a request needs, built once at start.
pub struct AppState {
    pub registry: Registry,
    /// Upstream connection pool of the shared runtime; see [`AppState::http`].
    http: UpstreamClient,
    connect_timeout: Duration,
    pub timeouts: CallTimeouts,
    pub max_body_bytes: usize,
    /// Open access, master key or virtual keys (cached lookups).
    pub auth: Arc<Authenticator>,
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
    pub(crate) cut_in_flight: tokio_util::sync::CancellationToken,
    /// Reload watch, cache refresh/purge and cache writes; drained at shutdown.
    pub background: Background,
    shutdown_grace: Duration,
    /// `/v1/models` body, rendered once.
    pub(crate) models_body: Bytes,
    /// Health URL of the in-process mock, checked by `/ready`.
    pub(crate) mock_health_url: Option<String>,
    /// Open client connections per serving thread (`runtime = "per_core"`; else empty).
    pub open_connections: OpenConnections,
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
        let http = UpstreamClient::new(config.server.connect_timeout())?;
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
        let auth = Arc::new(Authenticator::new(
            store.clone(),
            open,
            master_key,
            Duration::from_millis(config.auth.key_cache_ttl_ms),
            Duration::from_millis(config.auth.key_stale_ttl_ms),
        ));
        tracing::info!(database = store.backend(), open_access = open, "outcome log ready");
        let background = Background::new();
        let routing = RoutingEngine::start(config.router.clone(), &registry.models, &background).await?;
        spawn_reload_on_sighup(&background, &routing);
        background.spawn_loop("timer wheel anchor", keep_timer_wheel_armed());
        // The semantic cache embeds queries with the router's embedder.
        let embedding_dim = if GatewayCache::wants_embedder(config) { Some(routing.start_embedder().await?) } else { None };
        let audit_judge = match &config.cache.audit_judge {
            Some(name) => match registry
                .resolve(name)
                .map_err(|_| Error::Config(format!("[cache] audit_judge `{name}` is not a configured model")))?
            {
                crate::registry::Target::Model(model) => Some(crate::response_cache::AuditJudge { model, http: http.clone() }),
                crate::registry::Target::Route(_) => {
                    return Err(Error::Config(format!("[cache] audit_judge `{name}` is a route; name a model")))
                }
            },
            None => None,
        };
        let cache = GatewayCache::build(config, &store, embedding_dim, &background, audit_judge).await?;
        // A local embedding model loads its weights in the background: the server is up at
        // once and the first `/v1/embeddings` request waits only for what is left.
        if registry.models.values().any(|m| matches!(m.provider.as_ref(), crate::providers::Provider::Local)) {
            let warm = routing.clone();
            background.spawn_loop("embedder warm-up", async move {
                if let Err(e) = warm.start_embedder().await {
                    tracing::warn!(error = %e, "the local embedding model is unavailable until its weights are fetched");
                }
            });
        }
        let limits = Arc::new(Limiter::from_config(&config.limits)?);
        tracing::info!(backend = limits.backend_name(), "limits ready");
        Ok(Self {
            background,
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
            connect_timeout: config.server.connect_timeout(),
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
            open_connections: OpenConnections::new(config.server.per_core_threads().unwrap_or(0)),
        })
    }

    /// The HTTP client for upstream calls: a per-core serving thread's own pool (its
    /// connections are driven by that thread's runtime, so proxying never wakes another
    /// thread), else the shared one. Cloning is a reference-count increment.
    pub fn http(&self) -> UpstreamClient {
        THREAD_HTTP.with(|local| local.borrow().clone()).unwrap_or_else(|| self.http.clone())
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

thread_local! {
    /// Set on a per-core serving thread: its own upstream connection pool.
    static THREAD_HTTP: std::cell::RefCell<Option<UpstreamClient>> = const { std::cell::RefCell::new(None) };
}

/// Makes `http` the upstream pool of requests served on this thread (a per-core serving thread).
pub(crate) fn use_thread_upstream_pool(http: UpstreamClient) {
    THREAD_HTTP.with(|local| *local.borrow_mut() = Some(http));
}

fn models_body(config: &Config) -> Bytes {
    let mut data: Vec<serde_json::Value> = config
        .models
        .iter()
        .map(|(name, model)| {
            let owner = if model.provider == crate::config::LOCAL_PROVIDER { "switchyard" } else { model.provider.as_str() };
            json!({"id": name, "object": "model", "created": 0, "owned_by": owner})
        })
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
    use crate::handlers;
    let dashboard = DashboardState {
        auth: state.auth.clone(),
        store: state.store.clone(),
        routing: state.routing.clone(),
        cache: state.cache.clone(),
    };
    Router::new()
        .route("/v1/chat/completions", post(crate::chat::completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/v1/responses", post(crate::responses::create))
        .route("/v1/messages", post(crate::messages::create))
        .route("/admin/keys", post(crate::admin::create).get(crate::admin::list))
        .route("/admin/keys/{id}", axum::routing::patch(crate::admin::update))
        .route("/admin/keys/{id}/revoke", post(crate::admin::revoke))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/feedback", post(handlers::feedback))
        .route("/admin/reload", post(handlers::reload_selector))
        .route("/metrics", get(handlers::metrics))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(handlers::ready))
        .merge(crate::dashboard::router(dashboard))
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        // No axum body limit layer: handlers take the raw `Body` and `read_body` enforces
        // `max_body_bytes`, so the 413 carries an OpenAI error body (and a layer per request
        // costs a boxed service clone, a boxed future and an extension).
        .layer(EchoRequestIdLayer)
        .with_state(state)
}

/// Longest client `x-request-id` echoed back (longer ones are ignored, not truncated).
const MAX_CLIENT_REQUEST_ID: usize = 128;

/// Every answer, errors included, carries `x-request-id`: the client's own when it sent one
/// (visible ASCII, at most 128 characters), so one id ties the client's logs to the gateway's
/// (the chat span and the fallback warning record it as `client_request_id`), else the
/// gateway's request id. The gateway's id stays the key of the outcome log and of
/// `/v1/feedback`: clients reuse their ids (retries, batch jobs), and a repeated key would
/// lose a row.
///
/// A layer of its own rather than `middleware::from_fn`, which clones the (boxed) inner
/// service and boxes a future for every request.
#[derive(Clone, Copy)]
struct EchoRequestIdLayer;

impl<S> tower_layer::Layer<S> for EchoRequestIdLayer {
    type Service = EchoRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EchoRequestId { inner }
    }
}

#[derive(Clone)]
struct EchoRequestId<S> {
    inner: S,
}

impl<S> tower_service::Service<axum::extract::Request> for EchoRequestId<S>
where
    S: tower_service::Service<axum::extract::Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EchoRequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let client_id = client_request_id(request.headers()).cloned();
        EchoRequestIdFuture { inner: self.inner.call(request), client_id }
    }
}

pin_project_lite::pin_project! {
    struct EchoRequestIdFuture<F> {
        #[pin]
        inner: F,
        client_id: Option<HeaderValue>,
    }
}

impl<F, E> std::future::Future for EchoRequestIdFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        let id = this.client_id.take().or_else(|| response.headers().get(crate::chat::HEADER_REQUEST_ID).cloned());
        if let Some(id) = id {
            response.headers_mut().insert(crate::chat::HEADER_CLIENT_REQUEST_ID, id);
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// The client's `x-request-id` in `headers`, when it is worth echoing and logging.
pub(crate) fn client_request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    let value = headers.get(crate::chat::HEADER_CLIENT_REQUEST_ID)?;
    let text = value.to_str().ok()?;
    (!text.is_empty() && text.len() <= MAX_CLIENT_REQUEST_ID && text.bytes().all(|b| b.is_ascii_graphic())).then_some(value)
}

/// How much of a body over the limit is still read (and dropped) before the 413 is sent, and
/// for how long. A server that answers while the client is still uploading and then closes
/// the connection with the rest unread makes the kernel send a reset, and the client often
/// sees that reset instead of the 413 it was sent. Reading the rest first lets the answer
/// arrive (and the connection be reused); past these bounds the connection is closed anyway.
const OVERSIZED_DRAIN_BYTES: usize = 8 << 20;
const OVERSIZED_DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads the body up to the configured limit.
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    let unreadable = |e: axum::Error| Error::invalid(format!("could not read request body: {e}"));
    // Frames are kept as they came: a body in one frame (the usual case) is not copied.
    let mut frames: Vec<Bytes> = Vec::new();
    let mut size: u64 = 0;
    // A declared `Content-Length` over the limit is refused before reading any of it.
    let mut too_large = axum::body::HttpBody::size_hint(&body).lower() > limit as u64;
    while !too_large {
        let Some(frame) = body.frame().await else { break };
        let Ok(data) = frame.map_err(unreadable)?.into_data() else { continue };
        size += data.len() as u64;
        too_large = size > limit as u64;
        frames.push(data);
    }
    if too_large {
        let _ = tokio::time::timeout(OVERSIZED_DRAIN_TIME, async {
            let mut drained = 0;
            while drained < OVERSIZED_DRAIN_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => drained += frame.data_ref().map_or(0, Bytes::len),
                    Some(Err(_)) | None => break,
                }
            }
        })
        .await;
        return Err(Error::PayloadTooLarge { limit });
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => frames.concat().into(),
    })
}

/// Keeps a near deadline in the timer wheel of the runtime this runs on, so that the
/// timeouts every request sets (first byte, then the body) are added without
/// waking the runtime's I/O driver. Tokio wakes the driver (an eventfd write; on the shared
/// runtime, often a parked worker on another CPU) whenever a timer is added that expires
/// before the wheel's next deadline, which is always the case while the wheel is empty —
/// between requests at moderate load. One wake-up a second replaces about one per request.
pub(crate) async fn keep_timer_wheel_armed() {
    /// Any request timeout longer than this is added without waking the driver.
    const PERIOD: Duration = Duration::from_secs(1);
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
    }
}

/// SIGHUP reloads the selector checkpoints (the usual "reload your config" signal).
fn spawn_reload_on_sighup(background: &Background, routing: &Arc<RoutingEngine>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        let routing = Arc::downgrade(routing);
        background.spawn_loop("reload on SIGHUP", async move {
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

/// A bound server, ready to run.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    per_core: bool,
    router: Router,
    state: Arc<AppState>,
}

impl Application {
    pub async fn build(config: &Config, listen: Option<SocketAddr>) -> Result<Self, Error> {
        let state = Arc::new(AppState::build(config).await?);
        let addr = listen.unwrap_or(config.server.listen);
        let listener = serving::bind(addr).map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Self {
            addr,
            listener,
            per_core: config.server.per_core_threads().is_some(),
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
        /// How long background work (cache writes) gets to finish after the server stopped.
        const BACKGROUND_DRAIN: Duration = Duration::from_secs(5);
        // Stops accepting; in-flight requests go on.
        let stop_accepting = CancellationToken::new();
        // Per-core threads keep their runtimes (and the connections they drive) until the
        // outcome log is flushed: released when this returns, or is dropped.
        let release = CancellationToken::new();
        let _release_on_exit = release.clone().drop_guard();
        let server = if self.per_core {
            serving::serve_per_core(
                self.listener,
                self.router,
                self.state.open_connections.clone(),
                self.state.connect_timeout,
                stop_accepting.clone(),
                release.clone(),
            )?
        } else {
            serving::serve_shared(self.listener, self.router, stop_accepting.clone())
        };
        let mut server = std::pin::pin!(server);
        let grace = self.state.shutdown_grace;
        let stop = stop_accepting.clone();
        let grace_over = async move {
            shutdown.await;
            stop.cancel();
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
        // Loops stop; cache writes already started finish, so the next start is warm.
        self.state.background.shutdown(BACKGROUND_DRAIN).await;
        self.state.shutdown_log().await;
        served
    }
}
