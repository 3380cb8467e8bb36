//! `POST /v1/messages`: the Anthropic Messages API as an ingress, so Claude SDK clients can use
//! switchyard's models and routes. Like [`crate::responses`], the request becomes a chat
//! completion run by the chat pipeline (any upstream serves it; limits, cache, routing and
//! the log are chat's), and the answer goes back in Anthropic's shape: a `message` object,
//! or the `message_start` … `content_block_delta` … `message_stop` event stream. Errors are
//! Anthropic-shaped too (`{"type": "error", "error": {"type", "message"}}`) with the same
//! status as on chat. The key may come as `x-api-key` (what Anthropic SDKs send) or bearer.
//!
//! Translated: `system` (string or text blocks), `messages` with text and image blocks
//! (base64 or URL), `max_tokens`, `temperature`, `top_p`, `stop_sequences`, `metadata.user_id`,
//! `stream`. Refused with a 400: tools and tool blocks.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::app::{read_body, AppState};
use crate::error::Error;
use crate::ingress::{chat_content, chunk_events, completion_parts, run_chat, ChatBody, ChunkEvent};

/// The chat completion body for a Messages request.
pub fn to_chat(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    let request: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("request body is not a JSON object: {e}")))?;
    let mut chat = Map::new();
    let mut messages = Vec::new();
    for (field, value) in &request {
        match field.as_str() {
            "model" if value.as_str().is_some_and(|m| !m.is_empty()) => {
                chat.insert("model".into(), value.clone());
            }
            "model" => return Err(Error::invalid_param("model", "`model` must be a non-empty string")),
            "max_tokens" => {
                let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| Error::invalid_param("max_tokens", "`max_tokens` must be a positive integer"))?;
                chat.insert("max_tokens".into(), json!(n));
            }
            "temperature" | "top_p" => {
                if !value.is_number() {
                    return Err(Error::invalid(format!("`{field}` must be a number")));
                }
                chat.insert(field.clone(), value.clone());
            }
            "stop_sequences" => {
                if !value.as_array().is_some_and(|stops| stops.iter().all(Value::is_string)) {
                    return Err(Error::invalid_param("stop_sequences", "`stop_sequences` must be an array of strings"));
                }
                chat.insert("stop".into(), value.clone());
            }
            "stream" => {
                let stream = value.as_bool().ok_or_else(|| Error::invalid_param("stream", "`stream` must be a boolean"))?;
                chat.insert("stream".into(), json!(stream));
                if stream {
                    chat.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").filter(|u| u.is_string()) {
                    chat.insert("user".into(), user.clone());
                }
            }
            "system" => match value {
                Value::String(text) => messages.insert(0, json!({"role": "system", "content": text})),
                Value::Array(blocks) => {
                    let text = blocks
                        .iter()
                        .map(|b| b.get("text").and_then(Value::as_str).ok_or_else(|| Error::invalid_param("system", "`system` blocks must be text blocks")))
                        .collect::<Result<Vec<_>, _>>()?
                        .join("\n");
                    messages.insert(0, json!({"role": "system", "content": text}));
                }
                _ => return Err(Error::invalid_param("system", "`system` must be a string or text blocks")),
            },
            "messages" => {}
            "tools" | "tool_choice" => {
                return Err(Error::invalid_param("tools", "tools are not supported on /v1/messages yet; use /v1/chat/completions"))
            }
            "top_k" | "service_tier" | "thinking" | "container" | "mcp_servers" => {}
            _ => return Err(Error::invalid(format!("unknown or unsupported field `{field}`"))),
        }
    }
    if !chat.contains_key("model") {
        return Err(Error::invalid_param("model", "`model` is required"));
    }
    if !chat.contains_key("max_tokens") {
        return Err(Error::invalid_param("max_tokens", "`max_tokens` is required"));
    }
    match request.get("messages") {
        Some(Value::Array(turns)) if !turns.is_empty() => {
            for turn in turns {
                messages.push(message(turn)?);
            }
        }
        _ => return Err(Error::invalid_param("messages", "`messages` must be a non-empty array")),
    }
    chat.insert("messages".into(), Value::Array(messages));
    Ok(chat)
}

/// One Anthropic message → one chat message.
fn message(turn: &Value) -> Result<Value, Error> {
    let bad = |message: String| Error::invalid_param("messages", message);
    let role = match turn.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => role,
        _ => return Err(bad("each message needs `role`: user or assistant".into())),
    };
    let content = match turn.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for block in blocks {
                parts.push(match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).ok_or_else(|| bad("a text block needs `text`".into()))?;
                        json!({"type": "text", "text": text})
                    }
                    Some("image") => {
                        let source = &block["source"];
                        let url = match source["type"].as_str() {
                            Some("base64") => match (source["media_type"].as_str(), source["data"].as_str()) {
                                (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
                                _ => return Err(bad("a base64 image needs `media_type` and `data`".into())),
                            },
                            Some("url") => source["url"].as_str().ok_or_else(|| bad("a url image needs `url`".into()))?.to_owned(),
                            _ => return Err(bad("an image source must be base64 or url".into())),
                        };
                        json!({"type": "image_url", "image_url": {"url": url}})
                    }
                    Some(kind @ ("tool_use" | "tool_result")) => {
                        return Err(bad(format!("`{kind}` blocks are not supported on /v1/messages yet")))
                    }
                    other => return Err(bad(format!("content blocks of type `{}` are not supported", other.unwrap_or("?")))),
                });
            }
            chat_content(role, parts)
        }
        _ => return Err(bad("each message needs `content`: a string or content blocks".into())),
    };
    Ok(json!({"role": role, "content": content}))
}

/// Chat's finish reason in Anthropic's words.
fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A chat completion → an Anthropic `message`.
pub fn from_completion(completion: &Value, id: &str, model: &str) -> Value {
    let (text, finish_reason, input_tokens, output_tokens) = completion_parts(completion);
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(finish_reason),
        "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    })
}

/// An error in Anthropic's shape, with the status chat would have answered.
pub fn error_response(error: &Error) -> Response {
    let status = error.status();
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": error.to_string()}});
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(retry) = error.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, retry);
    }
    response
}

/// The handler.
pub async fn create(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match serve(state, headers, body).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn serve(state: Arc<AppState>, mut headers: HeaderMap, body: Body) -> Result<Response, Error> {
    // Anthropic clients send the key as `x-api-key`; the chat pipeline reads bearer keys.
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            let mut bearer = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::Unauthorized)?;
            bearer.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, bearer);
        }
    }
    state.auth.authenticate(&headers).await?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let chat = to_chat(&bytes)?;
    let model = chat.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let answer = run_chat(state, headers, &chat).await?;
    let id = format!("msg_{}", answer.request_id);
    let mut response = match answer.body {
        ChatBody::Stream(body) => Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(translate_stream(body, id, model)))
            .map_err(|e| Error::Internal(e.to_string()))?,
        ChatBody::Completion(completion) => (StatusCode::OK, axum::Json(from_completion(&completion, &id, &model))).into_response(),
    };
    response.headers_mut().extend(answer.gateway_headers);
    Ok(response)
}

fn event(kind: &str, body: Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {body}\n\n"))
}

/// Chat chunks → Anthropic stream events.
fn translate_stream(body: Body, id: String, model: String) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    async_stream::stream! {
        let start = json!({
            "type": "message_start",
            "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}},
        });
        yield Ok(event("message_start", start));
        yield Ok(event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
        let mut finish_reason: Option<String> = None;
        let chunks = chunk_events(body);
        futures_util::pin_mut!(chunks);
        while let Some(chunk) = chunks.next().await {
            match chunk {
                ChunkEvent::Text(text) => {
                    yield Ok(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})));
                }
                ChunkEvent::Usage { prompt_tokens, completion_tokens } => (input_tokens, output_tokens) = (prompt_tokens, completion_tokens),
                // The request carried no tools (they are refused), so no call can come back.
                ChunkEvent::ToolCall { .. } => {}
                ChunkEvent::Finish(reason) => finish_reason = Some(reason),
                ChunkEvent::Failed { message, .. } => {
                    yield Ok(event("error", json!({"type": "error", "error": {"type": "api_error", "message": message}})));
                    return;
                }
            }
        }
        yield Ok(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(finish_reason.as_deref()), "stop_sequence": null},
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        });
        yield Ok(event("message_delta", delta));
        yield Ok(event("message_stop", json!({"type": "message_stop"})));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Map<String, Value>, Error> {
        to_chat(body.to_string().as_bytes())
    }

    #[test]
    fn system_messages_and_blocks_translate() {
        let out = chat(json!({
            "model": "auto", "max_tokens": 64, "system": [{"type": "text", "text": "Be brief"}], "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Seen"}]},
                {"role": "user", "content": "And?"},
            ],
        }))
        .expect("ok");
        assert_eq!(out["messages"][0], json!({"role": "system", "content": "Be brief"}));
        assert_eq!(out["messages"][1]["content"][1]["image_url"]["url"], "data:image/png;base64,AAAA");
        assert_eq!(out["messages"][2], json!({"role": "assistant", "content": "Seen"}));
        assert_eq!(out["stop"], json!(["END"]));
        assert_eq!(out["max_tokens"], 64);
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let param = |body: Value| match chat(body) {
            Err(Error::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        };
        let ok = |extra: Value| {
            let mut body = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            body
        };
        assert_eq!(param(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})), Some("max_tokens"));
        assert_eq!(param(json!({"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})), Some("model"));
        assert_eq!(param(ok(json!({"messages": []}))), Some("messages"));
        assert_eq!(param(ok(json!({"tools": [{"name": "f"}]}))), Some("tools"));
        assert_eq!(param(ok(json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}))), Some("messages"));
        assert_eq!(param(ok(json!({"messages": [{"role": "system", "content": "x"}]}))), Some("messages"));
        assert_eq!(param(ok(json!({"stop_sequences": "END"}))), Some("stop_sequences"));
    }

    #[test]
    fn errors_keep_their_status_in_anthropic_shape() {
        let response = error_response(&Error::UnknownModel("nope".into()));
        assert_eq!(response.status(), 404);
        let response = error_response(&Error::Unauthorized);
        assert_eq!(response.status(), 401);
    }
}
