//! What the translated APIs share (`/v1/responses`, `/v1/messages`): they turn their request
//! into a chat completion, run it through the chat pipeline ([`crate::chat`]) — so auth,
//! limits, cache, routing, retries and the outcome log are the same for every API — and turn
//! its answer back into their own shape. This module runs the pipeline and reads its answer:
//! a whole completion, or the stream of chat chunks as [`ChunkEvent`]s.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};

use crate::app::AppState;
use crate::chat::HEADER_REQUEST_ID;
use crate::error::Error;
use crate::sse::SseParser;

/// The chat pipeline's answer to a translated request.
pub struct ChatAnswer {
    /// The gateway's own headers (`x-switchyard-*`), to pass on.
    pub gateway_headers: Vec<(HeaderName, HeaderValue)>,
    /// The request id without dashes, for the translated API's ids.
    pub request_id: String,
    pub body: ChatBody,
}

pub enum ChatBody {
    Completion(Value),
    Stream(Body),
}

/// Runs `chat` (a chat completion body) through the chat pipeline with the client's headers.
pub async fn run_chat(state: Arc<AppState>, headers: HeaderMap, chat: &Map<String, Value>) -> Result<ChatAnswer, Error> {
    let body = Body::from(serde_json::to_vec(chat).map_err(|e| Error::Internal(e.to_string()))?);
    let mut headers = headers;
    headers.remove(header::CONTENT_LENGTH);
    let answer = crate::chat::completions(State(state), headers, body).await?;
    let (parts, body) = answer.into_parts();
    let request_id = parts.headers.get(HEADER_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default().replace('-', "");
    let gateway_headers = parts
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-switchyard-"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let streamed = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = if streamed {
        ChatBody::Stream(body)
    } else {
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| Error::Internal(e.to_string()))?;
        ChatBody::Completion(serde_json::from_slice(&bytes).map_err(|e| Error::BadGateway(format!("chat answer is not JSON: {e}")))?)
    };
    Ok(ChatAnswer { gateway_headers, request_id, body })
}

/// What a chat stream says, chunk by chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkEvent {
    /// Answer text.
    Text(String),
    /// Token counts (the last chunk, since the translation asks for usage).
    Usage { prompt_tokens: u64, completion_tokens: u64 },
    /// A piece of a tool call: the first piece of call `index` has its id and name, later
    /// ones more of its arguments.
    ToolCall { index: u64, id: Option<String>, name: Option<String>, arguments: String },
    /// Why the answer ended (`stop`, `length`, …).
    Finish(String),
    /// The stream ended with an error (the chat pipeline's error event, or a broken body).
    Failed { message: String, code: Option<String> },
}

/// The chat chunks of `body` as events; ends at `[DONE]`, at the end of the body, or after a
/// `Failed`.
pub fn chunk_events(body: Body) -> impl Stream<Item = ChunkEvent> + Send {
    async_stream::stream! {
        let mut parser = SseParser::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else {
                yield ChunkEvent::Failed { message: "the answer stream broke".into(), code: None };
                return;
            };
            parser.push(chunk);
            while let Some(event) = parser.next_event() {
                if event.is_done() {
                    return;
                }
                let Ok(data) = serde_json::from_str::<Value>(event.data()) else { continue };
                if let Some(error) = data.get("error") {
                    let message = error["message"].as_str().unwrap_or("upstream error").to_owned();
                    yield ChunkEvent::Failed { message, code: error["code"].as_str().map(str::to_owned) };
                    return;
                }
                let choice = &data["choices"][0];
                if let Some(text) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                    yield ChunkEvent::Text(text.to_owned());
                }
                for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    yield ChunkEvent::ToolCall {
                        index: call["index"].as_u64().unwrap_or(0),
                        id: call["id"].as_str().map(str::to_owned),
                        name: call["function"]["name"].as_str().map(str::to_owned),
                        arguments: call["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
                    };
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    yield ChunkEvent::Finish(reason.to_owned());
                }
                if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
                    yield ChunkEvent::Usage {
                        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                        completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
                    };
                }
            }
        }
    }
}

/// The first choice's text, finish reason and token counts of a chat completion.
pub fn completion_parts(completion: &Value) -> (&str, Option<&str>, u64, u64) {
    let choice = &completion["choices"][0];
    (
        choice["message"]["content"].as_str().unwrap_or_default(),
        choice["finish_reason"].as_str(),
        completion["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    )
}

/// A translated message's chat content: the parts, or for an assistant turn their text (chat
/// takes assistant content as text, not parts).
pub fn chat_content(role: &str, parts: Vec<Value>) -> Value {
    if role == "assistant" {
        Value::String(parts.iter().filter_map(|p| p["text"].as_str()).collect())
    } else {
        Value::Array(parts)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
