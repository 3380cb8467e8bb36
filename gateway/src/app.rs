//! The HTTP application: state, routes, and the request path.
//!
//! `Application::build` binds the listener (port 0 in tests) and `run_until_stopped` serves
//! until a shutdown signal, draining in-flight requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::{Config, ProviderKind};
use crate::error::Error;
use crate::mock::{self, MockOptions};
use crate::openai::{ChatRequest, Usage};
use crate::outcome::RequestOutcome;
use crate::providers::{CallTimeouts, PieceStream, UpstreamResponse};
use crate::registry::{ModelEntry, Registry, Target};
use crate::sse::data_event;

pub const HEADER_REQUEST_ID: &str = "x-switchyard-request-id";
pub const HEADER_MODEL: &str = "x-switchyard-model";
pub const HEADER_ROUTE: &str = "x-switchyard-route";

/// Everything a request needs, built once at start.
pub struct AppState {
    pub registry: Registry,
    pub http: reqwest::Client,
    pub timeouts: CallTimeouts,
    pub max_body_bytes: usize,
    master_key: Option<String>,
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
        Ok(Self {
            models_body: models_body(config),
            registry,
            http,
            timeouts: CallTimeouts {
                first_byte: config.server.first_byte_timeout(),
                body: config.server.request_timeout(),
            },
            max_body_bytes: config.server.max_body_bytes,
            master_key,
            mock_health_url: mock_addr.map(|addr| format!("http://{addr}/health")),
        })
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Error> {
        let Some(expected) = &self.master_key else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Error::Unauthorized)?;
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        // The body limit is enforced by `read_body` so the 413 carries an OpenAI error body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    state.authorize(&headers)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], state.models_body.clone()).into_response())
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
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

/// socket → auth → parse → resolve model/route → provider → stream to client → outcome.
async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let started = Instant::now();
    state.authorize(&headers)?;
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
    let (route, model) = match state.registry.resolve(&request.model)? {
        Target::Model(model) => (None, model),
        Target::Route(route) => (Some(route.name.clone()), route.default.clone()),
    };
    let request_id = Uuid::now_v7();
    let mut outcome = RequestOutcome::new(request_id, route.clone(), &model, request.stream);

    let upstream = model
        .provider
        .chat(&state.http, &request, &model.upstream_model, &headers, state.timeouts)
        .await;
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            outcome.finish_error(&error, started);
            return Err(error);
        }
    };
    let mut response = match upstream {
        UpstreamResponse::Json { body, usage } => {
            outcome.finish_ok(usage, &model, started, None);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        UpstreamResponse::Stream(pieces) => {
            let stream = client_stream(pieces, request.client_wants_usage, model.clone(), outcome, started);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(stream))
                .map_err(|e| Error::Internal(e.to_string()))?
        }
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        headers.insert(HEADER_REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&model.name) {
        headers.insert(HEADER_MODEL, value);
    }
    if let Some(value) = route.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert(HEADER_ROUTE, value);
    }
    Ok(response)
}

/// Forwards pieces to the client as they arrive, drops the usage chunk the client did not
/// ask for, and records the outcome when the stream ends (or breaks).
fn client_stream(
    mut pieces: PieceStream,
    client_wants_usage: bool,
    model: Arc<ModelEntry>,
    mut outcome: RequestOutcome,
    started: Instant,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    async_stream::stream! {
        let mut usage: Option<Usage> = None;
        let mut first_token_ms: Option<f64> = None;
        while let Some(piece) = pieces.next().await {
            match piece {
                Ok(piece) => {
                    if piece.usage.is_some() {
                        usage = piece.usage;
                    }
                    if piece.has_content && first_token_ms.is_none() {
                        first_token_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                    }
                    if piece.usage_only && !client_wants_usage {
                        continue;
                    }
                    yield Ok(piece.bytes);
                }
                Err(error) => {
                    // Headers are gone already: end the stream with an error event.
                    outcome.finish_error(&error, started);
                    yield Ok(data_event(&error.body().to_string()));
                    return;
                }
            }
        }
        outcome.finish_ok(usage, &model, started, first_token_ms);
    }
}

/// A bound server, ready to run.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    router: Router,
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
            router: router(state),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Internal(format!("server error: {e}")))
    }
}
