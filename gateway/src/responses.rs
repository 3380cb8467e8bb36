//! `POST /v1/responses`: the OpenAI Responses API, translated to a chat completion and run
//! through the chat pipeline ([`crate::chat`]), so a Responses request is authenticated,
//! limited, cached, routed, retried and logged exactly like chat, on any upstream (OpenAI,
//! Anthropic, the mock). The answer is translated back: a `response` object, or the stream
//! of `response.*` events (`response.created` … `response.output_text.delta` …
//! `response.completed`).
//!
//! Translated: `input` (a string, or message items with `input_text` / `output_text` /
//! `input_image` parts, and `function_call` / `function_call_output` items), `instructions`
//! (a system message), function `tools` and `tool_choice`, `max_output_tokens`,
//! `temperature`, `top_p`, `user`, `text.format` (JSON mode and JSON schema), `stream`.
//! Refused with a 400 naming the field: hosted tools (web / file search…),
//! `previous_response_id` (the gateway keeps no conversation state), other item types.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::app::{read_body, AppState};
use crate::error::Error;
use crate::ingress::{chat_content, chunk_events, completion_parts, run_chat, unix_now, ChatBody, ChunkEvent};

/// What the response object echoes back from the request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<u64>,
    pub metadata: Value,
    pub stream: bool,
}

/// Fields of a Responses request the translation may ignore: they change nothing a
/// stateless gateway does.
const IGNORED: &[&str] = &["store", "metadata", "include", "truncation", "service_tier", "reasoning", "background", "prompt_cache_key", "safety_identifier"];

/// The chat completion body for a Responses request, and what to echo back.
pub fn to_chat(bytes: &[u8]) -> Result<(Map<String, Value>, Echo), Error> {
    let request: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("request body is not a JSON object: {e}")))?;
    let mut chat = Map::new();
    let mut echo = Echo { metadata: request.get("metadata").cloned().unwrap_or_else(|| json!({})), ..Echo::default() };
    for (field, value) in &request {
        match field.as_str() {
            "model" if value.as_str().is_some_and(|m| !m.is_empty()) => {
                chat.insert("model".into(), value.clone());
            }
            "model" => return Err(Error::invalid_param("model", "`model` must be a non-empty string")),
            "input" | "instructions" => {}
            "stream" => {
                echo.stream = value.as_bool().ok_or_else(|| Error::invalid_param("stream", "`stream` must be a boolean"))?;
                chat.insert("stream".into(), value.clone());
            }
            "max_output_tokens" => {
                let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| Error::invalid_param("max_output_tokens", "`max_output_tokens` must be a positive integer"))?;
                echo.max_output_tokens = Some(n);
                chat.insert("max_tokens".into(), json!(n));
            }
            "temperature" | "top_p" => {
                let x = value.as_f64().ok_or_else(|| Error::invalid_param(if field == "temperature" { "temperature" } else { "top_p" }, format!("`{field}` must be a number")))?;
                if field == "temperature" {
                    echo.temperature = Some(x);
                } else {
                    echo.top_p = Some(x);
                }
                chat.insert(field.clone(), value.clone());
            }
            "user" => {
                chat.insert("user".into(), value.clone());
            }
            "text" => {
                if let Some(format) = response_format(value)? {
                    chat.insert("response_format".into(), format);
                }
            }
            "tools" => {
                let tools = value.as_array().ok_or_else(|| Error::invalid_param("tools", "`tools` must be an array"))?;
                if !tools.is_empty() {
                    chat.insert("tools".into(), Value::Array(tools.iter().map(chat_tool).collect::<Result<_, _>>()?));
                }
            }
            "tool_choice" => {
                let choice = match value {
                    Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => value.clone(),
                    Value::Object(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
                        json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
                    }
                    _ => return Err(Error::invalid_param("tool_choice", "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\"}")),
                };
                chat.insert("tool_choice".into(), choice);
            }
            "parallel_tool_calls" => {
                chat.insert("parallel_tool_calls".into(), value.clone());
            }
            "previous_response_id" | "conversation" if value.is_null() => {}
            "previous_response_id" => return Err(unsupported("previous_response_id", "`previous_response_id` (the gateway keeps no conversation state; send the whole `input`)")),
            "conversation" => return Err(unsupported("conversation", "`conversation` (the gateway keeps no conversation state; send the whole `input`)")),
            other if IGNORED.contains(&other) => {}
            _ => return Err(Error::invalid(format!("unknown or unsupported field `{field}`"))),
        }
    }
    if !chat.contains_key("model") {
        return Err(Error::invalid_param("model", "`model` is required"));
    }
    let mut messages = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            echo.instructions = Some(text.clone());
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(Error::invalid_param("instructions", "`instructions` must be a string")),
    }
    match request.get("input") {
        Some(Value::String(text)) if !text.is_empty() => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) if !items.is_empty() => {
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some("function_call") => push_function_call(&mut messages, item)?,
                    Some("function_call_output") => {
                        let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| Error::invalid_param("input", "a `function_call_output` needs `call_id`"))?;
                        let output = match item.get("output") {
                            Some(Value::String(text)) => text.clone(),
                            Some(other) => other.to_string(),
                            None => return Err(Error::invalid_param("input", "a `function_call_output` needs `output`")),
                        };
                        messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                    }
                    _ => messages.push(message(item)?),
                }
            }
        }
        _ => return Err(Error::invalid_param("input", "`input` must be a non-empty string or a non-empty array of items")),
    }
    chat.insert("messages".into(), Value::Array(messages));
    if echo.stream {
        // Usage arrives with the last chunk: `response.completed` carries it.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok((chat, echo))
}

/// A Responses function tool → a chat tool.
fn chat_tool(tool: &Value) -> Result<Value, Error> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(unsupported("tools", "tools other than `function` tools (web search, file search, …)"));
    }
    let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| Error::invalid_param("tools", "a function tool needs `name`"))?;
    let mut function = json!({"name": name, "parameters": tool.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
    for key in ["description", "strict"] {
        if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
            function[key] = value.clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

/// A `function_call` input item joins the assistant turn before it (or starts one).
fn push_function_call(messages: &mut Vec<Value>, item: &Value) -> Result<(), Error> {
    let field = |name: &str| item.get(name).and_then(Value::as_str).ok_or_else(|| Error::invalid_param("input", format!("a `function_call` needs `{name}`")));
    let call = json!({"id": field("call_id")?, "type": "function", "function": {"name": field("name")?, "arguments": field("arguments")?}});
    if let Some(last) = messages.last_mut().filter(|m| m["role"] == "assistant") {
        if let Some(calls) = last.get_mut("tool_calls").and_then(Value::as_array_mut) {
            calls.push(call);
        } else {
            last["tool_calls"] = json!([call]);
        }
        return Ok(());
    }
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    Ok(())
}

fn unsupported(param: &'static str, what: &str) -> Error {
    Error::invalid_param(param, format!("{what} is not supported on /v1/responses yet; use /v1/chat/completions"))
}

/// `text.format` → `response_format`.
fn response_format(text: &Value) -> Result<Option<Value>, Error> {
    let bad = || Error::invalid_param("text", "`text.format` must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", …}");
    let Some(format) = text.get("format") else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            if !schema.contains_key("schema") {
                return Err(bad());
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(bad()),
    }
}

/// One input item → one chat message.
fn message(item: &Value) -> Result<Value, Error> {
    let bad = |message: String| Error::invalid_param("input", message);
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some(kind @ ("custom_tool_call" | "custom_tool_call_output")) => {
            return Err(unsupported("input", &format!("an `{kind}` item")))
        }
        Some(other) => return Err(bad(format!("input items of type `{other}` are not supported"))),
    }
    let role = match item.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system")) => role,
        Some("developer") => "system",
        _ => return Err(bad("an input message needs a role: user, assistant, system or developer".into())),
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                out.push(match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        let text = part.get("text").and_then(Value::as_str).ok_or_else(|| bad("a text part needs `text`".into()))?;
                        json!({"type": "text", "text": text})
                    }
                    Some("input_image") => {
                        let url = part.get("image_url").and_then(Value::as_str).ok_or_else(|| bad("an `input_image` part needs `image_url` (a URL or data URL)".into()))?;
                        let mut image = json!({"url": url});
                        if let Some(detail) = part.get("detail") {
                            image["detail"] = detail.clone();
                        }
                        json!({"type": "image_url", "image_url": image})
                    }
                    other => return Err(bad(format!("content parts of type `{}` are not supported", other.unwrap_or("?")))),
                });
            }
            chat_content(role, out)
        }
        _ => return Err(bad("an input message needs `content`: a string or an array of parts".into())),
    };
    Ok(json!({"role": role, "content": content}))
}

/// The handler: translate, run the chat pipeline, translate its answer back.
pub async fn create(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    state.auth.authenticate(&headers).await?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let (chat, echo) = to_chat(&bytes)?;
    let model = chat.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let answer = run_chat(state, headers, &chat).await?;
    let ids = Ids { response: format!("resp_{}", answer.request_id), message: format!("msg_{}", answer.request_id) };
    let mut response = match answer.body {
        ChatBody::Stream(body) => Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(translate_stream(body, ids, model, echo)))
            .map_err(|e| Error::Internal(e.to_string()))?,
        ChatBody::Completion(completion) => axum::Json(from_completion(&completion, &ids, &model, &echo)).into_response(),
    };
    response.headers_mut().extend(answer.gateway_headers);
    Ok(response)
}

/// The ids of one response and its message.
#[derive(Debug, Clone)]
pub struct Ids {
    pub response: String,
    pub message: String,
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    })
}

fn response_object(ids: &Ids, model: &str, echo: &Echo, status: &str, output: Value, usage: Value, created_at: u64) -> Value {
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({
        "id": ids.response,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model,
        "output": output,
        "usage": usage,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "metadata": echo.metadata,
        "temperature": echo.temperature,
        "top_p": echo.top_p,
        "max_output_tokens": echo.max_output_tokens,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
    })
}

fn message_item(ids: &Ids, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": ids.message,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// A chat completion → a `response` object (the first choice).
pub fn from_completion(completion: &Value, ids: &Ids, model: &str, echo: &Echo) -> Value {
    let (text, finish_reason, prompt_tokens, completion_tokens) = completion_parts(completion);
    let status = if finish_reason == Some("length") { "incomplete" } else { "completed" };
    let created = completion["created"].as_u64().unwrap_or_else(unix_now);
    let mut output = Vec::new();
    let calls = completion["choices"][0]["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
    if !text.is_empty() || calls.is_empty() {
        output.push(message_item(ids, text, status));
    }
    for call in &calls {
        let call_id = call["id"].as_str().unwrap_or_default();
        let name = call["function"]["name"].as_str().unwrap_or_default();
        output.push(function_call_item(call_id, name, call["function"]["arguments"].as_str().unwrap_or("{}"), "completed"));
    }
    response_object(ids, model, echo, status, Value::Array(output), usage(prompt_tokens, completion_tokens), created)
}

/// A `function_call` output item.
fn function_call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// Numbers the events of one stream.
struct Events {
    sequence: u64,
}

impl Events {
    fn event(&mut self, kind: &str, mut body: Value) -> Bytes {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        Bytes::from(format!("event: {kind}\ndata: {body}\n\n"))
    }
}

/// Chat completion chunks → `response.*` events.
fn translate_stream(body: Body, ids: Ids, model: String, echo: Echo) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    async_stream::stream! {
        let created = unix_now();
        let mut events = Events { sequence: 0 };
        let start = response_object(&ids, &model, &echo, "in_progress", json!([]), Value::Null, created);
        yield Ok(events.event("response.created", json!({"response": start})));
        yield Ok(events.event("response.in_progress", json!({"response": start})));
        yield Ok(events.event("response.output_item.added", json!({"output_index": 0, "item": {"type": "message", "id": ids.message, "status": "in_progress", "role": "assistant", "content": []}})));
        let empty_part = json!({"type": "output_text", "text": "", "annotations": []});
        yield Ok(events.event("response.content_part.added", json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "part": empty_part})));
        let mut text = String::new();
        let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
        let mut finish_reason: Option<String> = None;
        // Tool calls by their chat index: (call id, name, arguments so far).
        let mut calls: Vec<(u64, String, String, String)> = Vec::new();
        let chunks = chunk_events(body);
        futures_util::pin_mut!(chunks);
        while let Some(chunk) = chunks.next().await {
            match chunk {
                ChunkEvent::Text(delta) => {
                    yield Ok(events.event("response.output_text.delta", json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []})));
                    text.push_str(&delta);
                }
                ChunkEvent::Usage { prompt_tokens: p, completion_tokens: c } => (prompt_tokens, completion_tokens) = (p, c),
                ChunkEvent::Finish(reason) => finish_reason = Some(reason),
                ChunkEvent::ToolCall { index, id, name, arguments } => {
                    let position = match calls.iter().position(|c| c.0 == index) {
                        Some(position) => position,
                        None => {
                            let (call_id, name) = (id.unwrap_or_default(), name.unwrap_or_default());
                            let item = function_call_item(&call_id, &name, "", "in_progress");
                            yield Ok(events.event("response.output_item.added", json!({"output_index": calls.len() + 1, "item": item})));
                            calls.push((index, call_id, name, String::new()));
                            calls.len() - 1
                        }
                    };
                    if !arguments.is_empty() {
                        let item_id = format!("fc_{}", calls[position].1);
                        yield Ok(events.event("response.function_call_arguments.delta", json!({"item_id": item_id, "output_index": position + 1, "delta": arguments})));
                        calls[position].3.push_str(&arguments);
                    }
                }
                ChunkEvent::Failed { message, code } => {
                    let mut failed = response_object(&ids, &model, &echo, "failed", json!([]), Value::Null, created);
                    failed["error"] = json!({"code": code.unwrap_or_else(|| "server_error".into()), "message": message});
                    yield Ok(events.event("response.failed", json!({"response": failed})));
                    return;
                }
            }
        }
        let status = if finish_reason.as_deref() == Some("length") { "incomplete" } else { "completed" };
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        yield Ok(events.event("response.output_text.done", json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "text": text, "logprobs": []})));
        yield Ok(events.event("response.content_part.done", json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "part": part})));
        let item = message_item(&ids, &text, status);
        yield Ok(events.event("response.output_item.done", json!({"output_index": 0, "item": item})));
        let mut output = vec![item];
        for (position, (_, call_id, name, arguments)) in calls.iter().enumerate() {
            let item_id = format!("fc_{call_id}");
            yield Ok(events.event("response.function_call_arguments.done", json!({"item_id": item_id, "output_index": position + 1, "arguments": arguments})));
            let call = function_call_item(call_id, name, arguments, "completed");
            yield Ok(events.event("response.output_item.done", json!({"output_index": position + 1, "item": call})));
            output.push(call);
        }
        let done = response_object(&ids, &model, &echo, status, Value::Array(output), usage(prompt_tokens, completion_tokens), created);
        let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
        yield Ok(events.event(kind, json!({"response": done})));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Map<String, Value>, Error> {
        to_chat(body.to_string().as_bytes()).map(|(chat, _)| chat)
    }

    #[test]
    fn input_and_instructions_become_messages() {
        let out = chat(json!({"model": "auto", "input": "Hi", "instructions": "Be brief", "max_output_tokens": 20})).expect("ok");
        assert_eq!(out["messages"], json!([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]));
        assert_eq!(out["max_tokens"], 20);
        let items = json!([
            {"role": "developer", "content": "Rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Look"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Seen"}]},
        ]);
        let out = chat(json!({"model": "m", "input": items, "stream": true, "text": {"format": {"type": "json_object"}}})).expect("ok");
        assert_eq!(out["messages"][0], json!({"role": "system", "content": "Rules"}));
        assert_eq!(out["messages"][1]["content"][1], json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}));
        assert_eq!(out["messages"][2], json!({"role": "assistant", "content": "Seen"}));
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn what_cannot_be_translated_is_a_400_naming_the_field() {
        let param = |body: Value| match chat(body) {
            Err(Error::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        };
        assert_eq!(param(json!({"input": "x"})), Some("model"));
        assert_eq!(param(json!({"model": "m"})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": []})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})), Some("tools"));
        assert_eq!(param(json!({"model": "m", "input": "x", "tool_choice": "sometimes"})), Some("tool_choice"));
        assert_eq!(param(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})), Some("previous_response_id"));
        assert_eq!(param(json!({"model": "m", "input": [{"type": "function_call_output", "output": "1"}]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": [{"type": "custom_tool_call", "call_id": "c"}]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": "x", "max_output_tokens": 0})), Some("max_output_tokens"));
        assert_eq!(param(json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}})), Some("text"));
        assert_eq!(param(json!({"model": "m", "input": "x", "colour": 1})), None);
    }

    #[test]
    fn function_tools_and_call_items_translate() {
        let out = chat(json!({
            "model": "m",
            "tools": [{"type": "function", "name": "get_weather", "description": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"},
            ],
        }))
        .expect("ok");
        assert_eq!(out["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(out["tools"][0]["function"]["parameters"]["properties"]["city"]["type"], "string");
        assert_eq!(out["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
        let messages = out["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert_eq!(messages[1]["tool_calls"].as_array().map(Vec::len), Some(2), "consecutive calls share one assistant turn");
        assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}));

        let completion = json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]});
        let ids = Ids { response: "resp_1".into(), message: "msg_1".into() };
        let response = from_completion(&completion, &ids, "m", &Echo::default());
        assert_eq!(response["output"], json!([{"type": "function_call", "id": "fc_c9", "call_id": "c9", "name": "get_weather", "arguments": "{}", "status": "completed"}]));
    }

    #[test]
    fn a_completion_becomes_a_response_object() {
        let completion = json!({"created": 7, "choices": [{"message": {"content": "Hello"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
        let ids = Ids { response: "resp_1".into(), message: "msg_1".into() };
        let out = from_completion(&completion, &ids, "auto", &Echo::default());
        assert_eq!(out["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(out["status"], "incomplete");
        assert_eq!(out["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(out["usage"]["total_tokens"], 5);
        assert_eq!(out["created_at"], 7);
    }
}
