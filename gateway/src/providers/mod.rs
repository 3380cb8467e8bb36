//! Upstream APIs. Each provider turns an OpenAI-shaped request into its own wire format and
//! its answer back into OpenAI JSON or OpenAI SSE chunks, so the proxy above never sees the
//! difference.

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod openai;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use ::http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use ::http::HeaderMap;

use crate::error::Error;
use crate::openai::{ChatRequest, Usage};
pub use http::{SendError, UpstreamClient, UpstreamHttpResponse};

/// A piece of an OpenAI-format SSE stream on its way to the client.
#[derive(Debug, Clone)]
pub struct StreamPiece {
    /// Bytes to send (one or more complete SSE events).
    pub bytes: Bytes,
    /// Usage reported in this piece, if any.
    pub usage: Option<Usage>,
    /// This piece only carries usage (`choices: []`): the gateway asked for it on the
    /// client's behalf and drops it when the client did not ask.
    pub usage_only: bool,
    /// This piece carries answer content (for time to first token).
    pub has_content: bool,
}

pub type PieceStream = Pin<Box<dyn Stream<Item = Result<StreamPiece, Error>> + Send>>;

pub enum UpstreamResponse {
    /// A complete OpenAI chat.completion body.
    Json { body: Bytes, usage: Option<Usage> },
    Stream(PieceStream),
}

/// Timeouts applied to one upstream call.
#[derive(Debug, Clone, Copy)]
pub struct CallTimeouts {
    /// Until the response headers arrive.
    pub first_byte: Duration,
    /// For the whole body of a non-stream answer, and between two reads of a stream.
    pub body: Duration,
}

/// A configured upstream. Enum dispatch: the set of API shapes is small and closed.
pub enum Provider {
    OpenAi(openai::OpenAiProvider),
    Anthropic(anthropic::AnthropicProvider),
    Gemini(gemini::GeminiProvider),
    /// The in-process embedder (`provider = "local"`): embeddings only, no network.
    Local,
}

impl Provider {
    /// Sends one chat request upstream. `extra_headers` are request headers the provider
    /// forwards (the mock's fault-injection headers).
    pub async fn chat(
        &self,
        http: &UpstreamClient,
        request: &ChatRequest,
        upstream_model: &str,
        extra_headers: &HeaderMap,
        timeouts: CallTimeouts,
    ) -> Result<UpstreamResponse, Error> {
        match self {
            Self::OpenAi(p) => p.chat(http, request, upstream_model, extra_headers, timeouts).await,
            Self::Anthropic(p) => p.chat(http, request, upstream_model, timeouts).await,
            Self::Gemini(p) => p.chat(http, request, upstream_model, timeouts).await,
            Self::Local => Err(Error::invalid_param("model", "the local embedder answers /v1/embeddings only")),
        }
    }

    /// Sends an OpenAI-shaped embeddings request upstream (its `model` already set to the
    /// upstream's name) and returns the upstream's JSON body as it came.
    pub async fn embeddings(
        &self,
        http: &UpstreamClient,
        body: &serde_json::Map<String, serde_json::Value>,
        extra_headers: &HeaderMap,
        timeouts: CallTimeouts,
    ) -> Result<Bytes, Error> {
        match self {
            Self::OpenAi(p) => p.embeddings(http, body, extra_headers, timeouts).await,
            Self::Anthropic(_) | Self::Gemini(_) => Err(Error::invalid_param("model", "this provider's embeddings are not supported")),
            Self::Local => Err(Error::Internal("the local embedder is not called over HTTP".into())),
        }
    }
}

/// OpenAI's `stop` (a string or strings) as the list Anthropic and Gemini want.
pub(crate) fn stop_sequences(body: &serde_json::Map<String, serde_json::Value>) -> Option<serde_json::Value> {
    match body.get("stop")? {
        serde_json::Value::String(stop) => Some(serde_json::json!([stop])),
        serde_json::Value::Array(stops) => Some(serde_json::Value::Array(stops.clone())),
        _ => None,
    }
}

/// An API key as a header value, marked sensitive so that it is never printed.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(value).map_err(|_| Error::Config("API key contains characters not allowed in a header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// POSTs `body` as JSON to `url` with the provider's `headers` and the trace context, within
/// the first-byte timeout; a non-success status becomes the upstream's error.
pub(crate) async fn post_json(
    http: &UpstreamClient,
    url: &reqwest::Url,
    headers: HeaderMap,
    body: &impl serde::Serialize,
    timeouts: CallTimeouts,
) -> Result<UpstreamHttpResponse, Error> {
    let payload = serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?;
    post_payload(http, url, headers, payload, timeouts).await
}

/// `post_json` for a body already written as JSON.
pub(crate) async fn post_payload(
    http: &UpstreamClient,
    url: &reqwest::Url,
    mut headers: HeaderMap,
    payload: Vec<u8>,
    timeouts: CallTimeouts,
) -> Result<UpstreamHttpResponse, Error> {
    headers.extend(crate::telemetry::trace_headers());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let response = send(http.post(url, headers, Bytes::from(payload)), timeouts.first_byte).await?;
    if !response.status().is_success() {
        return Err(upstream_error(response, timeouts.body).await);
    }
    Ok(response)
}

/// A whole non-stream answer in a provider's own JSON, translated to an OpenAI completion.
pub(crate) async fn translated_json(
    response: UpstreamHttpResponse,
    timeouts: CallTimeouts,
    provider: &str,
    translate: impl FnOnce(&serde_json::Value) -> (serde_json::Value, Usage),
) -> Result<UpstreamResponse, Error> {
    let body = read_body(response, timeouts.body).await?;
    let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::BadGateway(format!("{provider} sent invalid JSON: {e}")))?;
    let (completion, usage) = translate(&answer);
    let body = serde_json::to_vec(&completion).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(UpstreamResponse::Json { body: Bytes::from(body), usage: Some(usage) })
}

/// Waits for a response within the first-byte timeout, mapping transport errors.
async fn send(
    request: impl std::future::Future<Output = Result<UpstreamHttpResponse, SendError>>,
    timeout: Duration,
) -> Result<UpstreamHttpResponse, Error> {
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(Error::GatewayTimeout(format!(
            "no response within {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(SendError::TimedOut(message))) => Err(Error::GatewayTimeout(message)),
        Ok(Err(SendError::Other(message))) => Err(Error::BadGateway(message)),
        Ok(Ok(response)) => Ok(response),
    }
}

/// A streamed answer's body chunks, ending in `GatewayTimeout` when none comes for `idle` and
/// in `BadGateway` when the connection breaks. The deadline moves lazily: a chunk only notes
/// when it came and the timer is re-armed when it fires early, so a fast stream does not
/// touch the timer wheel once per chunk.
pub(crate) struct UpstreamChunks {
    response: UpstreamHttpResponse,
    idle: Duration,
    last_chunk: tokio::time::Instant,
    stall: Pin<Box<tokio::time::Sleep>>,
}

impl UpstreamChunks {
    pub(crate) fn new(response: UpstreamHttpResponse, idle: Duration) -> Self {
        Self { response, idle, last_chunk: tokio::time::Instant::now(), stall: Box::pin(tokio::time::sleep(idle)) }
    }

    /// The next chunk; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            tokio::select! {
                biased;
                chunk = self.response.chunk() => {
                    return match chunk {
                        Ok(Some(chunk)) => {
                            self.last_chunk = tokio::time::Instant::now();
                            Ok(Some(chunk))
                        }
                        Ok(None) => Ok(None),
                        Err(e) => Err(Error::BadGateway(format!("upstream stream broke: {e}"))),
                    };
                }
                () = self.stall.as_mut() => {
                    let due = self.last_chunk + self.idle;
                    if tokio::time::Instant::now() >= due {
                        return Err(Error::GatewayTimeout("upstream stream stalled".into()));
                    }
                    self.stall.as_mut().reset(due);
                }
            }
        }
    }
}

/// Reads a whole body within a time limit.
pub(crate) async fn read_body(response: UpstreamHttpResponse, timeout: Duration) -> Result<Bytes, Error> {
    match tokio::time::timeout(timeout, response.bytes()).await {
        Err(_) => Err(Error::GatewayTimeout("response body not complete in time".into())),
        Ok(Err(message)) => Err(Error::BadGateway(message)),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Turns a non-success upstream response into an error that keeps its status and message.
pub(crate) async fn upstream_error(response: UpstreamHttpResponse, timeout: Duration) -> Error {
    let status = response.status();
    let retry_after: Option<HeaderValue> = response.header(RETRY_AFTER).cloned();
    let body = read_body(response, timeout).await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error
        .and_then(|e| e.get("message").and_then(|m| m.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                format!("upstream returned {status}")
            } else {
                text.chars().take(500).collect()
            }
        });
    let kind = error
        .and_then(|e| e.get("type").and_then(|t| t.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| if status.is_server_error() { "api_error" } else { "invalid_request_error" }.to_owned());
    let code = error.and_then(|e| e.get("code")).and_then(|c| match c {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    Error::Upstream {
        status,
        message,
        kind,
        code,
        retry_after,
    }
}
