//! `switchyard mock-upstream`: an OpenAI-compatible (and Anthropic-compatible) upstream for
//! tests, benchmarks and demos. Latency and failures are set per model, by config or by a
//! request header, so every failure mode the gateway handles can be produced on demand.
//!
//! Headers a request may carry:
//! - `x-mock-fault: 500` (any status), `429` or `429:SECS` (with Retry-After), `hang`,
//!   `reset` (connection dropped mid-answer); or per model: `x-mock-fault: gpt-4=500,b=hang`.
//!   A fault followed by `@N` hits only the first N requests that carry the same header value
//!   for the same model, then the model answers (a transient failure, for retry tests); a
//!   trailing `#tag` makes the value, and so its count, unique to one test.
//! - `x-mock-first-token-ms`, `x-mock-per-token-ms`: latency for this request.
//! - `x-mock-echo: 1`: a non-stream answer carries the request it received under `"echo"`,
//!   so tests can see exactly what the gateway sent upstream.

pub mod replay;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::error::Error;
use crate::openai::{content_text, unix_seconds, Usage};
use crate::sse::{data_event, DONE_EVENT};
pub use replay::ReplayStore;

/// How long a `hang` fault holds the request before giving up (bounded on purpose).
const HANG: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    RateLimited { retry_after_secs: u64 },
    Hang,
    ResetMidStream,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "hang" => Ok(Self::Hang),
            "reset" => Ok(Self::ResetMidStream),
            other => {
                let (code, retry) = other.split_once(':').unwrap_or((other, "1"));
                let code: u16 = code.parse().map_err(|_| format!("unknown fault `{text}`"))?;
                if code == 429 {
                    let retry_after_secs = retry.parse().map_err(|_| format!("bad Retry-After in `{text}`"))?;
                    Ok(Self::RateLimited { retry_after_secs })
                } else if (400..600).contains(&code) {
                    Ok(Self::Status(code))
                } else {
                    Err(format!("fault status must be 4xx or 5xx, got {code}"))
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct MockOptions {
    pub first_token_ms: u64,
    pub per_token_ms: u64,
    /// Faults applied to every request for a model.
    pub faults: HashMap<String, Fault>,
    pub replay: Option<ReplayStore>,
    /// Requests seen per (`x-mock-fault` value, model), for `@N` faults.
    pub fault_counts: std::sync::Mutex<HashMap<String, u32>>,
    /// The `traceparent` of every chat request that carried one (tests of trace propagation
    /// keep a clone).
    pub traceparents: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Binds the mock on `addr` and serves it in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr, options: MockOptions) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("mock upstream cannot bind {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    let app = router(Arc::new(options));
    let listener = listener.tap_io(|tcp| {
        // Small SSE writes must not wait for the client's delayed ACK (Nagle).
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "mock upstream stopped");
        }
    });
    Ok(bound)
}

pub fn router(options: Arc<MockOptions>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1beta/models/{model_method}", post(gemini_generate))
        .route("/openai/deployments/{deployment}/{*api}", post(azure))
        .route("/v1/models", get(|| async { axum::Json(json!({"object": "list", "data": []})) }))
        .route("/health", get(|| async { "ok" }))
        .with_state(options)
}

/// What a request asked for, after faults and latency were resolved.
struct Plan {
    model: String,
    first_token: Duration,
    per_token: Duration,
    fault: Option<Fault>,
}

fn plan(options: &MockOptions, headers: &HeaderMap, model: &str) -> Result<Plan, Box<Response>> {
    let header_ms = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut fault = options.faults.get(model).cloned();
    if let Some(spec) = headers.get("x-mock-fault").and_then(|v| v.to_str().ok()) {
        let chosen = if spec.contains('=') {
            spec.split(',')
                .filter_map(|pair| pair.split_once('='))
                .find(|(m, _)| m.trim() == model)
                .map(|(_, f)| f)
        } else {
            Some(spec)
        };
        if let Some(text) = chosen {
            let text = text.split_once('#').map_or(text, |(fault, _tag)| fault);
            let (text, first_n) = match text.split_once('@') {
                Some((fault, n)) => (fault, Some(n.trim().parse::<u32>().map_err(|_| bad_fault(format!("bad count in `{spec}`")))?)),
                None => (text, None),
            };
            let parsed: Fault = text.parse().map_err(bad_fault)?;
            let applies = match first_n {
                Some(n) => {
                    let mut counts = options.fault_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let seen = counts.entry(format!("{spec}\u{0}{model}")).or_insert(0);
                    *seen += 1;
                    *seen <= n
                }
                None => true,
            };
            if applies {
                fault = Some(parsed);
            }
        }
    }
    Ok(Plan {
        model: model.to_owned(),
        first_token: Duration::from_millis(header_ms("x-mock-first-token-ms").unwrap_or(options.first_token_ms)),
        per_token: Duration::from_millis(header_ms("x-mock-per-token-ms").unwrap_or(options.per_token_ms)),
        fault,
    })
}

fn bad_fault(message: String) -> Box<Response> {
    Box::new((StatusCode::BAD_REQUEST, axum::Json(Error::invalid(message).body())).into_response())
}

/// Applies a fault that happens before any answer byte; `None` means answer normally.
async fn fault_response(fault: &Option<Fault>) -> Option<Response> {
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = json!({"error": {"message": format!("mock upstream injected {code}"), "type": "server_error", "param": null, "code": null}});
            Some((status, axum::Json(body)).into_response())
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let body = json!({"error": {"message": "mock upstream rate limit", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}});
            Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", retry_after_secs.to_string())], axum::Json(body)).into_response())
        }
        Some(Fault::Hang) => {
            pause(HANG).await;
            Some(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Some(Fault::ResetMidStream) | None => None,
    }
}

/// Sleeps, except for zero: a zero-length tokio sleep still waits for the next timer tick
/// (~1 ms), which would put a floor under every mock answer.
async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(Error::invalid(message).body())).into_response()
}

/// Rough token count (≈ 4 characters a token), good enough for costing mock answers.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

/// The answer text: a recorded one when replaying a known prompt, the judge's verdict when
/// asked to judge (see [`mock_judge_score`]), else a short synthetic one.
fn answer_text(options: &MockOptions, model: &str, prompt: &str) -> String {
    if let Some(answer) = options.replay.as_ref().and_then(|r| r.answer(model, prompt)) {
        return answer.to_owned();
    }
    if let Some(score) = mock_judge_score(prompt) {
        return format!("The answer is adequate. Score: {score}");
    }
    if let Some(same) = mock_verdict(prompt) {
        return format!("Verdict: {}", if same { "SAME" } else { "DIFFERENT" });
    }
    let gist: String = prompt.chars().take(48).collect();
    format!("Mock answer from {model}: you asked about \"{gist}\".")
}

/// The mock plays the judge of `switchyard judge`: asked with its instruction, it scores an
/// answer by a fixed rule tests can recompute — its word count modulo 11.
pub fn mock_judge_score(prompt: &str) -> Option<usize> {
    if !prompt.contains(crate::judge::SCORE_INSTRUCTION) {
        return None;
    }
    let start = prompt.find("<answer>\n")? + "<answer>\n".len();
    let end = prompt.rfind("\n</answer>")?;
    Some(prompt.get(start..end)?.split_whitespace().count() % 11)
}

/// The mock plays the cache's audit judge by a fixed rule tests can recompute: SAME when the
/// reference and the candidate name the same model (their first five words agree).
pub fn mock_verdict(prompt: &str) -> Option<bool> {
    if !prompt.contains(crate::judge::VERDICT_INSTRUCTION) {
        return None;
    }
    let between = |open: &str, close: &str| -> Option<String> {
        let start = prompt.find(open)? + open.len();
        let end = start + prompt[start..].find(close)?;
        Some(prompt[start..end].split_whitespace().take(5).collect::<Vec<_>>().join(" "))
    };
    Some(between("<reference>\n", "\n</reference>")? == between("<candidate>\n", "\n</candidate>")?)
}

/// Splits an answer into stream deltas (a word and its trailing space each).
fn deltas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn last_user_prompt(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default()
}

fn prompt_tokens(messages: &[Value]) -> u64 {
    messages.iter().map(|m| estimate_tokens(&content_text(m.get("content"))) + 4).sum()
}

fn sse_response(stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The mock as Azure OpenAI: the deployment comes from the path, an `api-version` query
/// and an `api-key` header are required (401 / 404 like Azure without them); then it answers
/// as the OpenAI mock would for a model named like the deployment.
fn azure_request(deployment: &str, query: &HashMap<String, String>, headers: &HeaderMap, body: &Bytes) -> Result<Bytes, Box<Response>> {
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return Err(Box::new((StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": "404", "message": "Resource not found"}}))).into_response()));
    }
    if headers.get("api-key").is_none_or(|v| v.is_empty()) || headers.contains_key(header::AUTHORIZATION) {
        let error = json!({"error": {"code": "401", "message": "Access denied due to missing api-key header."}});
        return Err(Box::new((StatusCode::UNAUTHORIZED, axum::Json(error)).into_response()));
    }
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(bad_request("mock upstream: body is not JSON")));
    };
    request["model"] = json!(deployment);
    Ok(Bytes::from(request.to_string()))
}

async fn azure(
    State(options): State<Arc<MockOptions>>,
    Path((deployment, api)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match azure_request(&deployment, &query, &headers, &body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match api.as_str() {
        "chat/completions" => openai_chat(State(options), headers, body).await,
        "embeddings" => openai_embeddings(State(options), headers, body).await,
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": "404", "message": "Resource not found"}}))).into_response(),
    }
}

/// The mock as Google Gemini: `POST /v1beta/models/{model}:generateContent`, and
/// `:streamGenerateContent?alt=sse` (one `GenerateContentResponse` per SSE event, the last
/// with `finishReason` and `usageMetadata`). Needs `x-goog-api-key`; faults apply.
async fn gemini_generate(
    State(options): State<Arc<MockOptions>>,
    Path(model_method): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gemini_error = |status: StatusCode, message: &str| {
        (status, axum::Json(json!({"error": {"code": status.as_u16(), "message": message, "status": "INVALID_ARGUMENT"}}))).into_response()
    };
    let Some((model, method)) = model_method.split_once(':') else {
        return gemini_error(StatusCode::NOT_FOUND, "expected models/{model}:{method}");
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" if query.get("alt").is_some_and(|a| a == "sse") => true,
        _ => return gemini_error(StatusCode::NOT_FOUND, "unknown method (streams need alt=sse)"),
    };
    if headers.get("x-goog-api-key").is_none_or(|k| k.is_empty()) {
        return gemini_error(StatusCode::FORBIDDEN, "Method doesn't allow unregistered callers. Please use an API key.");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return gemini_error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let Some(contents) = request["contents"].as_array().filter(|c| !c.is_empty()) else {
        return gemini_error(StatusCode::BAD_REQUEST, "contents is required");
    };
    if contents.iter().any(|c| !matches!(c["role"].as_str(), Some("user" | "model"))) {
        return gemini_error(StatusCode::BAD_REQUEST, "roles must be user or model");
    }
    let plan = match plan(&options, &headers, model) {
        Ok(plan) => plan,
        Err(response) => return *response,
    };
    if let Some(response) = fault_response(&plan.fault).await {
        return response;
    }
    let text_of = |content: &Value| -> String { content["parts"].as_array().map(|p| p.iter().filter_map(|p| p["text"].as_str()).collect()).unwrap_or_default() };
    let prompt = contents.iter().rev().find(|c| c["role"] == "user").map(text_of).unwrap_or_default();
    let mut text = answer_text(&options, model, &prompt);
    if request["generationConfig"]["responseMimeType"] == "application/json" {
        text = json!({"answer": text}).to_string();
    }
    let prompt_tokens: u64 = contents.iter().map(|c| estimate_tokens(&text_of(c))).sum::<u64>() + estimate_tokens(&text_of(&request["systemInstruction"]));
    let usage = json!({"promptTokenCount": prompt_tokens, "candidatesTokenCount": estimate_tokens(&text), "totalTokenCount": prompt_tokens + estimate_tokens(&text)});
    let model = model.to_owned();
    if !stream {
        pause(plan.first_token).await;
        return axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": model, "responseId": uuid::Uuid::now_v7().simple().to_string(),
        }))
        .into_response();
    }
    let words = deltas(&text);
    let (first_token, per_token) = (plan.first_token, plan.per_token);
    let events = async_stream::stream! {
        pause(first_token).await;
        let last = words.len().saturating_sub(1);
        for (i, word) in words.iter().enumerate() {
            let mut chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": word}]}, "index": 0}], "modelVersion": model});
            if i == last {
                chunk["candidates"][0]["finishReason"] = json!("STOP");
                chunk["usageMetadata"] = usage.clone();
            }
            yield Ok::<_, std::io::Error>(Bytes::from(format!("data: {chunk}\r\n\r\n")));
            pause(per_token).await;
        }
    };
    sse_response(events)
}

/// Dimensions of the mock's embeddings.
pub const MOCK_EMBEDDING_DIM: usize = 8;

/// A deterministic unit vector per text (from its hash), so tests can recompute it.
pub fn mock_embedding(text: &str) -> Vec<f32> {
    let hash = blake3::hash(text.as_bytes());
    let raw: Vec<f32> = hash.as_bytes()[..MOCK_EMBEDDING_DIM].iter().map(|b| f32::from(*b) - 127.5).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

/// OpenAI's embeddings API, for upstream embedding models in tests: texts get
/// [`mock_embedding`], token arrays the embedding of their ids written out; faults apply.
async fn openai_embeddings(State(options): State<Arc<MockOptions>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("mock upstream: body is not JSON");
    };
    let Some(model) = request["model"].as_str() else {
        return bad_request("mock upstream: missing model");
    };
    let plan = match plan(&options, &headers, model) {
        Ok(plan) => plan,
        Err(response) => return *response,
    };
    if let Some(response) = fault_response(&plan.fault).await {
        return response;
    }
    let texts: Vec<String> = match &request["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) => vec![Value::Array(items.clone()).to_string()],
        Value::Array(items) => items.iter().map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned)).collect(),
        _ => return bad_request("mock upstream: input must be a string or an array"),
    };
    let base64 = request["encoding_format"] == "base64";
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = mock_embedding(text);
            let embedding = if base64 { json!(crate::embeddings::to_base64(&vector)) } else { json!(vector) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = texts.iter().map(|t| estimate_tokens(t)).sum();
    axum::Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response()
}

async fn openai_chat(State(options): State<Arc<MockOptions>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        options.traceparents.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(traceparent.to_owned());
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("mock upstream: body is not JSON");
    };
    let Some(model) = request["model"].as_str() else {
        return bad_request("mock upstream: missing model");
    };
    let Some(messages) = request["messages"].as_array() else {
        return bad_request("mock upstream: missing messages");
    };
    let plan = match plan(&options, &headers, model) {
        Ok(plan) => plan,
        Err(response) => return *response,
    };
    if let Some(response) = fault_response(&plan.fault).await {
        return response;
    }
    let prompt = last_user_prompt(messages);
    let mut text = answer_text(&options, model, &prompt);
    if matches!(request["response_format"]["type"].as_str(), Some("json_object" | "json_schema")) {
        text = json!({"answer": text}).to_string();
    }
    let wants_tool = request["tools"].as_array().is_some_and(|t| !t.is_empty())
        && request["tool_choice"] != "none"
        && messages.last().is_some_and(|m| m["role"] != "tool");
    let tool_call = wants_tool.then(|| {
        let name = request["tools"][0]["function"]["name"].as_str().unwrap_or("tool").to_owned();
        (format!("call_mock_{}", uuid::Uuid::now_v7().simple()), name)
    });
    let n = request["n"].as_u64().unwrap_or(1).clamp(1, 16);
    let usage = Usage::new(prompt_tokens(messages), estimate_tokens(&text) * n);
    let id = format!("chatcmpl-mock-{}", uuid::Uuid::now_v7().simple());
    let created = unix_seconds();
    let finish_reason = if tool_call.is_some() { "tool_calls" } else { "stop" };

    if request["stream"].as_bool() != Some(true) {
        if plan.fault == Some(Fault::ResetMidStream) {
            let broken = futures_util::stream::iter([
                Ok(Bytes::from_static(b"{\"id\":")),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset")),
            ]);
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(broken))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        pause(plan.first_token + plan.per_token * deltas(&text).len() as u32).await;
        let choices: Vec<Value> = (0..n)
            .map(|index| {
                let message = match &tool_call {
                    Some((call_id, name)) => json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}]}),
                    None => json!({"role": "assistant", "content": text}),
                };
                json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish_reason})
            })
            .collect();
        let mut response = json!({
            "id": id, "object": "chat.completion", "created": created, "model": plan.model,
            "system_fingerprint": "mock", "choices": choices, "usage": usage,
        });
        if headers.contains_key("x-mock-echo") {
            response["echo"] = request;
        }
        return axum::Json(response).into_response();
    }

    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = move |delta: Value, finish: Option<&str>, usage: Option<Usage>| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
            "system_fingerprint": "mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        if let Some(usage) = usage {
            chunk["choices"] = json!([]);
            chunk["usage"] = json!(usage);
        }
        data_event(&chunk.to_string())
    };
    let words = deltas(&text);
    let (first_token, per_token, reset) = (plan.first_token, plan.per_token, plan.fault == Some(Fault::ResetMidStream));
    let stream = async_stream::stream! {
        pause(first_token).await;
        yield Ok::<_, std::io::Error>(chunk(json!({"role": "assistant", "content": ""}), None, None));
        if let Some((call_id, name)) = &tool_call {
            let delta = json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}]});
            yield Ok(chunk(delta, None, None));
        } else {
            for (i, word) in words.iter().enumerate() {
                if reset && i == words.len() / 2 {
                    yield Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset mid-stream"));
                    return;
                }
                if !per_token.is_zero() && i > 0 {
                    pause(per_token).await;
                }
                yield Ok(chunk(json!({"content": word}), None, None));
            }
        }
        yield Ok(chunk(json!({}), Some(finish_reason), None));
        if include_usage {
            yield Ok(chunk(json!({}), None, Some(usage)));
        }
        yield Ok(Bytes::from_static(DONE_EVENT));
    };
    sse_response(stream)
}

/// A minimal Anthropic Messages endpoint, enough to test the gateway's translation.
async fn anthropic_messages(State(options): State<Arc<MockOptions>>, headers: HeaderMap, body: Bytes) -> Response {
    let anthropic_error = |status: StatusCode, kind: &str, message: &str| {
        (status, axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
    };
    if headers.get("anthropic-version").is_none() {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version header is required");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "body is not JSON");
    };
    let (Some(model), Some(messages), Some(_)) =
        (request["model"].as_str(), request["messages"].as_array(), request["max_tokens"].as_u64())
    else {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "model, messages and max_tokens are required");
    };
    if messages.first().is_some_and(|m| m["role"] != "user") || messages.iter().any(|m| m["role"] == "system") {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "messages must start with user; system goes in `system`");
    }
    let plan = match plan(&options, &headers, model) {
        Ok(plan) => plan,
        Err(response) => return *response,
    };
    if let Some(Fault::Status(code)) = plan.fault {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return anthropic_error(status, "overloaded_error", "mock Anthropic injected an error");
    }
    if let Some(response) = fault_response(&plan.fault).await {
        return response;
    }
    let prompt = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
            _ => String::new(),
        })
        .unwrap_or_default();
    let text = answer_text(&options, model, &prompt);
    let tool = request["tools"][0]["name"].as_str().map(str::to_owned);
    let answered_tool = messages.last().is_some_and(|m| {
        m["content"].as_array().is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
    });
    let tool = tool.filter(|_| !answered_tool && request["tool_choice"]["type"] != "none");
    let input_tokens = estimate_tokens(&prompt) + request["system"].as_str().map(estimate_tokens).unwrap_or(0);
    let output_tokens = estimate_tokens(&text);
    let id = format!("msg_mock_{}", uuid::Uuid::now_v7().simple());
    let stop_reason = if tool.is_some() { "tool_use" } else { "end_turn" };
    let tool_id = format!("toolu_mock_{}", uuid::Uuid::now_v7().simple());

    if request["stream"].as_bool() != Some(true) {
        pause(plan.first_token).await;
        let mut content = vec![json!({"type": "text", "text": text})];
        if let Some(name) = &tool {
            content.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": {"city": "Paris"}}));
        }
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }))
        .into_response();
    }
    let event = |name: &str, data: Value| Ok::<_, Infallible>(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
    let model = model.to_owned();
    let words = deltas(&text);
    let first_token = plan.first_token;
    let stream = async_stream::stream! {
        pause(first_token).await;
        yield event("message_start", json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}));
        yield event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
        yield event("ping", json!({"type": "ping"}));
        for word in &words {
            yield event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}));
        }
        yield event("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
        if let Some(name) = &tool {
            yield event("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}));
            yield event("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}));
            yield event("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}));
            yield event("content_block_stop", json!({"type": "content_block_stop", "index": 1}));
        }
        yield event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}}));
        yield event("message_stop", json!({"type": "message_stop"}));
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("503".parse::<Fault>(), Ok(Fault::Status(503)));
        assert_eq!("429:7".parse::<Fault>(), Ok(Fault::RateLimited { retry_after_secs: 7 }));
        assert_eq!("hang".parse::<Fault>(), Ok(Fault::Hang));
        assert_eq!("reset".parse::<Fault>(), Ok(Fault::ResetMidStream));
        assert!("200".parse::<Fault>().is_err());
        assert!("boom".parse::<Fault>().is_err());
    }

    #[test]
    fn deltas_keep_all_text() {
        let text = "one two  three";
        assert_eq!(deltas(text).concat(), text);
    }
}
