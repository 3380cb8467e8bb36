//! `POST /v1/embeddings`: the OpenAI embeddings API, answered by the in-process embedder
//! (`provider = "local"`, the same model the router and the semantic cache use) or proxied to
//! an upstream embedding model configured like a chat model (`kind = "embedding"`).
//!
//! Same steps as chat, shorter: authenticate → parse → resolve → limits → embed or call
//! upstream → answer → one outcome row (prompt tokens, cost; never routed, never cached).
//! The local model truncates each input to its token window (as sentence-transformers does)
//! and `usage` counts the tokens it embedded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::app::{read_body, AppState};
use crate::chat::{HEADER_MODEL, HEADER_REQUEST_ID};
use crate::error::Error;
use crate::openai::Usage;
use crate::outcome::RequestOutcome;
use crate::providers::{CallTimeouts, Provider};
use crate::registry::ModelEntry;

/// The most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// How long local inputs may wait for the embedder (it batches them with routing traffic).
const LOCAL_DEADLINE: Duration = Duration::from_secs(30);

/// Inputs of one request queued for the local embedder at a time (its batch size).
const LOCAL_CHUNK: usize = 32;

/// A parsed embeddings request. `body` is forwarded upstream as it came, `model` rewritten.
#[derive(Debug)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Input,
    pub base64: bool,
    pub dimensions: Option<u64>,
    pub body: Map<String, Value>,
}

/// `input`: one or more texts, or token ids (which only an upstream can read).
#[derive(Debug, PartialEq)]
pub enum Input {
    Texts(Vec<String>),
    /// Number of token arrays, and their total length.
    TokenIds { inputs: usize, tokens: u64 },
}

impl Input {
    pub fn len(&self) -> usize {
        match self {
            Self::Texts(texts) => texts.len(),
            Self::TokenIds { inputs, .. } => *inputs,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EmbeddingRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let body: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("request body is not a JSON object: {e}")))?;
        let model = match body.get("model") {
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            _ => return Err(Error::invalid_param("model", "`model` must be a non-empty string")),
        };
        let input = parse_input(body.get("input"))?;
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(format)) if format == "float" => false,
            Some(Value::String(format)) if format == "base64" => true,
            Some(_) => return Err(Error::invalid_param("encoding_format", "`encoding_format` must be \"float\" or \"base64\"")),
        };
        let dimensions = match body.get("dimensions") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_u64() {
                Some(d) if d > 0 => Some(d),
                _ => return Err(Error::invalid_param("dimensions", "`dimensions` must be a positive integer")),
            },
        };
        Ok(Self { model, input, base64, dimensions, body })
    }
}

fn parse_input(value: Option<&Value>) -> Result<Input, Error> {
    let bad = |message: &str| Error::invalid_param("input", message.to_owned());
    let text = |value: &Value| match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(bad("`input` must not contain empty strings")),
        _ => Err(bad("`input` must be a string, an array of strings, or token ids")),
    };
    let token_count = |items: &[Value]| -> Result<u64, Error> {
        if items.is_empty() || !items.iter().all(|t| t.as_u64().is_some()) {
            return Err(bad("a token array must be a non-empty array of non-negative integers"));
        }
        Ok(items.len() as u64)
    };
    let input = match value {
        None | Some(Value::Null) => return Err(bad("`input` is required")),
        Some(single @ Value::String(_)) => Input::Texts(vec![text(single)?]),
        Some(Value::Array(items)) if items.is_empty() => return Err(bad("`input` must not be empty")),
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => Input::Texts(items.iter().map(text).collect::<Result<_, _>>()?),
            Value::Number(_) => Input::TokenIds { inputs: 1, tokens: token_count(items)? },
            Value::Array(_) => {
                let mut tokens = 0;
                for item in items {
                    let Value::Array(ids) = item else { return Err(bad("`input` mixes token arrays with other values")) };
                    tokens += token_count(ids)?;
                }
                Input::TokenIds { inputs: items.len(), tokens }
            }
            _ => return Err(bad("`input` must be a string, an array of strings, or token ids")),
        },
        Some(_) => return Err(bad("`input` must be a string, an array of strings, or token ids")),
    };
    if input.len() > MAX_INPUTS {
        return Err(bad(&format!("`input` has more than {MAX_INPUTS} items")));
    }
    Ok(input)
}

/// The handler.
pub async fn embeddings(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    let started = Instant::now();
    let request_id = Uuid::now_v7();
    let caller = state.auth.authenticate(&headers).await?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let request = EmbeddingRequest::parse(&bytes)?;
    let model = state.registry.resolve_embedding(&request.model)?;
    // From here on the request is for a configured model: every outcome leaves a row.
    let mut outcome = RequestOutcome::new(request_id, None, &model, false).log_to(state.log.clone());
    outcome.tenant = caller.tenant.clone();
    outcome.key_id = caller.key_id;
    let admitted = if caller.may_use(&model.name) {
        state.limits.admit(&caller).await
    } else {
        Err(Error::ModelNotAllowed(model.name.clone()))
    };
    let admission = match admitted {
        Ok(admission) => admission,
        Err(error) => {
            outcome.finish_error(&error, started);
            return Err(error);
        }
    };
    let mut outcome = outcome.charge_limits(admission);
    let answered = match model.provider.as_ref() {
        Provider::Local => embed_locally(&state, &model, request).await,
        provider => call_upstream(&state, provider, &model, request, &headers).await,
    };
    match answered {
        Ok((body, usage)) => {
            outcome.finish_ok(Some(usage), &model, started, None);
            let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
                headers.insert(HEADER_REQUEST_ID, value);
            }
            if let Ok(value) = HeaderValue::from_str(&model.name) {
                headers.insert(HEADER_MODEL, value);
            }
            Ok(response)
        }
        Err(error) => {
            outcome.finish_error(&error, started);
            Err(error)
        }
    }
}

/// Embeds the texts with the in-process embedder (loaded on first use). Inputs are queued
/// one by one so the embedder batches them with each other and with routing traffic.
async fn embed_locally(state: &AppState, model: &ModelEntry, request: EmbeddingRequest) -> Result<(bytes::Bytes, Usage), Error> {
    let Input::Texts(texts) = request.input else {
        return Err(Error::invalid_param("input", format!("`{}` embeds text; token ids are not accepted", model.name)));
    };
    let unavailable = |e: Error| Error::Unavailable(format!("the local embedder is unavailable: {e}"));
    let dim = state.routing.start_embedder().await.map_err(unavailable)?;
    let service = state
        .routing
        .embedding_service()
        .ok_or_else(|| Error::Unavailable("the local embedder is not loaded".into()))?;
    if request.dimensions.is_some_and(|d| d != dim as u64) {
        return Err(Error::invalid_param("dimensions", format!("`{}` returns {dim} dimensions and cannot shorten them", model.name)));
    }
    // Counting tokens for `usage` tokenises every input: off the async workers.
    let texts = Arc::new(texts);
    let (embedder, counted) = (Arc::clone(service.embedder()), Arc::clone(&texts));
    let tokens = tokio::task::spawn_blocking(move || {
        counted.iter().try_fold(0u64, |sum, text| Ok::<_, router_model::Error>(sum + embedder.tokenize(text)?.len() as u64))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
    let deadline = Instant::now() + LOCAL_DEADLINE;
    // A few at a time: a 2,048-input request must not fill the embedder's queue (routing
    // traffic shares it) or be refused by it.
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(LOCAL_CHUNK) {
        vectors.extend(futures_util::future::join_all(chunk.iter().map(|text| service.embed(text, deadline))).await);
    }
    let mut data = Vec::with_capacity(vectors.len());
    for (index, vector) in vectors.into_iter().enumerate() {
        let vector = vector.map_err(|e| {
            if e.is_overloaded() {
                Error::Unavailable(format!("the local embedder is overloaded: {e}"))
            } else {
                Error::Internal(format!("embedding failed: {e}"))
            }
        })?;
        let embedding = if request.base64 { Value::String(to_base64(&vector)) } else { json!(vector.as_ref()) };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let usage = Usage::new(tokens, 0);
    let body = json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok((bytes::Bytes::from(body.to_string()), usage))
}

/// Little-endian f32 bytes in standard base64: what OpenAI sends for `encoding_format: base64`.
pub fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Forwards the request to the model's provider; the usage it reports is what is costed.
async fn call_upstream(
    state: &AppState,
    provider: &Provider,
    model: &ModelEntry,
    request: EmbeddingRequest,
    headers: &HeaderMap,
) -> Result<(bytes::Bytes, Usage), Error> {
    let mut body = request.body;
    body.insert("model".into(), Value::String(model.upstream_model.clone()));
    let timeouts: CallTimeouts = state.timeouts;
    let _permit = match &model.bulkhead {
        Some(bulkhead) => Some(bulkhead.clone().try_acquire_owned().map_err(|_| {
            Error::Unavailable(format!("provider `{}` is at its max_concurrent", model.provider_name))
        })?),
        None => None,
    };
    let answer = provider.embeddings(&state.http(), &body, headers, timeouts).await?;
    let parsed: Value = serde_json::from_slice(&answer)
        .map_err(|e| Error::BadGateway(format!("embeddings answer is not JSON: {e}")))?;
    let prompt_tokens = parsed.pointer("/usage/prompt_tokens").and_then(Value::as_u64).or(match &request.input {
        Input::TokenIds { tokens, .. } => Some(*tokens),
        Input::Texts(_) => None,
    });
    let usage = Usage::new(prompt_tokens.unwrap_or(0), 0);
    Ok((answer, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<EmbeddingRequest, Error> {
        EmbeddingRequest::parse(body.to_string().as_bytes())
    }

    #[test]
    fn every_input_shape_parses() {
        let one = parse(json!({"model": "m", "input": "hello"})).expect("string");
        assert_eq!(one.input, Input::Texts(vec!["hello".into()]));
        assert!(!one.base64);
        let many = parse(json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64"})).expect("array");
        assert_eq!(many.input, Input::Texts(vec!["a".into(), "b".into()]));
        assert!(many.base64);
        let ids = parse(json!({"model": "m", "input": [1, 2, 3]})).expect("ids");
        assert_eq!(ids.input, Input::TokenIds { inputs: 1, tokens: 3 });
        let nested = parse(json!({"model": "m", "input": [[1, 2], [3]], "dimensions": 8})).expect("nested");
        assert_eq!(nested.input, Input::TokenIds { inputs: 2, tokens: 3 });
        assert_eq!(nested.dimensions, Some(8));
    }

    #[test]
    fn bad_input_names_the_parameter() {
        let param = |body: Value| match parse(body) {
            Err(Error::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        };
        assert_eq!(param(json!({"input": "x"})), Some("model"));
        assert_eq!(param(json!({"model": "m"})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": []})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": ""})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": ["a", 1]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": [[1], "a"]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": [-1]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": {"a": 1}})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": vec!["a"; MAX_INPUTS + 1]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": "a", "encoding_format": "int8"})), Some("encoding_format"));
        assert_eq!(param(json!({"model": "m", "input": "a", "dimensions": 0})), Some("dimensions"));
        assert!(matches!(EmbeddingRequest::parse(b"[1]"), Err(Error::InvalidRequest { param: None, .. })));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let encoded = to_base64(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64");
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
