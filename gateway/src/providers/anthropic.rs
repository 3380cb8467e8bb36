//! Anthropic Messages API, spoken to in its own format and answered to the client in
//! OpenAI's: request, response, stop reasons, usage, tool calls and the stream's event
//! sequence are translated here and nowhere else.

use std::collections::HashMap;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Map, Value};

use super::{post_json, secret_header, translated_json, CallTimeouts, StreamPiece, UpstreamClient, UpstreamHttpResponse, UpstreamResponse};
use crate::error::Error;
use crate::openai::{content_text, unix_seconds, ChatRequest, Usage};
use crate::sse::{data_event, SseParser, DONE_EVENT};

const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI clients often leave it out.
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub struct AnthropicProvider {
    messages_url: reqwest::Url,
    headers: HeaderMap,
}

impl AnthropicProvider {
    pub fn new(base_url: &str, api_key: Option<&str>, headers: HeaderMap) -> Result<Self, Error> {
        let mut headers = headers;
        headers.insert("anthropic-version", http::HeaderValue::from_static(API_VERSION));
        if let Some(key) = api_key {
            headers.insert("x-api-key", secret_header(key)?);
        }
        let messages_url = format!("{}/messages", base_url.trim_end_matches('/'));
        let messages_url = reqwest::Url::parse(&messages_url)
            .map_err(|e| Error::Config(format!("invalid base_url `{base_url}`: {e}")))?;
        Ok(Self {
            messages_url,
            headers,
        })
    }

    pub async fn chat(
        &self,
        http: &UpstreamClient,
        request: &ChatRequest,
        upstream_model: &str,
        timeouts: CallTimeouts,
    ) -> Result<UpstreamResponse, Error> {
        let body = to_anthropic_request(request, upstream_model)?;
        let response = post_json(http, &self.messages_url, self.headers.clone(), &body, timeouts).await?;
        if !request.stream {
            return translated_json(response, timeouts, "Anthropic", to_openai_completion).await;
        }
        let include_usage = request.client_wants_usage;
        Ok(UpstreamResponse::Stream(Box::pin(translate_stream(response, timeouts, include_usage))))
    }
}

/// OpenAI chat request → Anthropic Messages request.
pub fn to_anthropic_request(request: &ChatRequest, upstream_model: &str) -> Result<Value, Error> {
    let body = request.body();
    let mut system_parts: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for message in request.messages() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or_default();
        let (anthropic_role, blocks) = match role {
            "system" | "developer" => {
                system_parts.push(content_text(message.get("content")));
                continue;
            }
            "user" => ("user", user_blocks(message.get("content"))),
            "assistant" => ("assistant", assistant_blocks(message)?),
            "tool" => {
                let tool_use_id = message.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": tool_use_id,
                    "content": content_text(message.get("content")),
                });
                ("user", vec![block])
            }
            other => {
                return Err(Error::invalid_param("messages", format!("unsupported message role `{other}`")))
            }
        };
        // Anthropic wants user and assistant turns to alternate; several tool results
        // in a row must travel in one user turn.
        match messages.last_mut() {
            Some(last) if last["role"] == anthropic_role => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": anthropic_role, "content": blocks})),
        }
    }

    if let Some(instruction) = json_mode_instruction(body.get("response_format"))? {
        system_parts.push(instruction);
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(upstream_model.to_owned()));
    out.insert("messages".into(), Value::Array(messages));
    if !system_parts.is_empty() {
        out.insert("system".into(), Value::String(system_parts.join("\n\n")));
    }
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(value) = body.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), value.clone());
        }
    }
    if let Some(stops) = super::stop_sequences(body) {
        out.insert("stop_sequences".into(), stops);
    }
    if request.stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(|function| {
                let mut tool = Map::new();
                tool.insert("name".into(), function.get("name").cloned().unwrap_or(Value::Null));
                if let Some(description) = function.get("description") {
                    tool.insert("description".into(), description.clone());
                }
                let schema = function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                tool.insert("input_schema".into(), schema);
                Value::Object(tool)
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let parallel_disabled = body.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let tool_choice = match body.get("tool_choice") {
        Some(Value::String(choice)) => match choice.as_str() {
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => Some(json!({"type": "auto"})),
        },
        Some(Value::Object(choice)) => choice
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    };
    if let Some(mut choice) = tool_choice.or_else(|| parallel_disabled.then(|| json!({"type": "auto"}))) {
        if parallel_disabled && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        if out.contains_key("tools") {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(Value::Object(out))
}

/// Anthropic has no JSON mode: `response_format` becomes an instruction at the end of the
/// system prompt (with the schema, for `json_schema`). Claude follows it reliably, but
/// unlike OpenAI's constrained decoding nothing enforces it; clients should still parse
/// defensively.
fn json_mode_instruction(format: Option<&Value>) -> Result<Option<String>, Error> {
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            "Respond with one valid JSON object and nothing else: no prose, no code fences.".to_owned(),
        )),
        Some("json_schema") => {
            let schema = format.get("json_schema").and_then(|s| s.get("schema")).ok_or_else(|| {
                Error::invalid_param("response_format", "`json_schema` needs `json_schema.schema`")
            })?;
            Ok(Some(format!(
                "Respond with one valid JSON object that conforms to this JSON Schema, and nothing else (no prose, no code fences):\n{schema}"
            )))
        }
        _ => Err(Error::invalid_param("response_format", "`response_format.type` must be text, json_object or json_schema")),
    }
}

fn user_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"type": "text", "text": part.get("text").cloned().unwrap_or_default()})),
                Some("image_url") => {
                    let url = part.get("image_url").and_then(|i| i.get("url")).and_then(Value::as_str)?;
                    Some(image_block(url))
                }
                _ => None,
            })
            .collect(),
        other => vec![json!({"type": "text", "text": content_text(other)})],
    }
}

fn image_block(url: &str) -> Value {
    // data:image/png;base64,AAAA
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((media_type, data)) = rest.split_once(";base64,") {
            return json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
        }
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

fn assistant_blocks(message: &Value) -> Result<Vec<Value>, Error> {
    let mut blocks = Vec::new();
    let text = content_text(message.get("content"));
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for call in calls {
            let function = call.get("function").cloned().unwrap_or_default();
            let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            let input: Value = serde_json::from_str(if arguments.trim().is_empty() { "{}" } else { arguments })
                .map_err(|_| Error::invalid_param("messages", "tool call arguments must be a JSON object"))?;
            blocks.push(json!({
                "type": "tool_use",
                "id": call.get("id").cloned().unwrap_or_default(),
                "name": function.get("name").cloned().unwrap_or_default(),
                "input": input,
            }));
        }
    }
    Ok(blocks)
}

/// Anthropic stop reason → OpenAI finish reason.
pub fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    Some(match stop_reason? {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    })
}

fn anthropic_usage(usage: Option<&Value>) -> Usage {
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64).unwrap_or(0);
    let prompt = field("input_tokens")
        .saturating_add(field("cache_read_input_tokens"))
        .saturating_add(field("cache_creation_input_tokens"));
    Usage::new(prompt, field("output_tokens"))
}

/// Anthropic message → OpenAI chat.completion, and its usage.
pub fn to_openai_completion(message: &Value) -> (Value, Usage) {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    if let Some(Value::Array(blocks)) = message.get("content") {
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                Some("tool_use") => tool_calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").cloned().unwrap_or_default(),
                        "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                    }
                })),
                _ => {}
            }
        }
    }
    let usage = anthropic_usage(message.get("usage"));
    let mut reply = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !tool_calls.is_empty() {
        reply["tool_calls"] = Value::Array(tool_calls);
    }
    let completion = json!({
        "id": message.get("id").cloned().unwrap_or_default(),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": message.get("model").cloned().unwrap_or_default(),
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": null,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage,
    });
    (completion, usage)
}

/// Turns Anthropic's event sequence into OpenAI chunks, one event at a time.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Anthropic content-block index → OpenAI tool_calls index.
    tool_index: HashMap<u64, u64>,
    finish_reason: Option<&'static str>,
    include_usage: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool) -> Self {
        Self {
            include_usage,
            created: unix_seconds(),
            ..Self::default()
        }
    }

    /// Fixes the `created` timestamp of the chunks (tests compare two translations).
    pub fn created_at(mut self, created: u64) -> Self {
        self.created = created;
        self
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        data_event(&chunk.to_string())
    }

    /// Pieces to emit for one Anthropic event (`event:` name and parsed `data:`).
    pub fn translate(&mut self, name: &str, data: &Value) -> Vec<StreamPiece> {
        let piece = |bytes: Bytes| StreamPiece {
            bytes,
            usage: None,
            usage_only: false,
            has_content: true,
        };
        match name {
            "message_start" => {
                let message = &data["message"];
                self.id = message["id"].as_str().unwrap_or_default().to_owned();
                self.model = message["model"].as_str().unwrap_or_default().to_owned();
                let usage = anthropic_usage(message.get("usage"));
                self.input_tokens = usage.prompt_tokens;
                self.output_tokens = usage.completion_tokens;
                vec![piece(self.chunk(json!({"role": "assistant", "content": ""}), None))]
            }
            "content_block_start" => {
                let block = &data["content_block"];
                let index = data["index"].as_u64().unwrap_or(0);
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let tool_index = self.tool_index.len() as u64;
                        self.tool_index.insert(index, tool_index);
                        let delta = json!({"tool_calls": [{
                            "index": tool_index,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        }]});
                        vec![piece(self.chunk(delta, None))]
                    }
                    Some("text") => match block["text"].as_str() {
                        Some(text) if !text.is_empty() => vec![piece(self.chunk(json!({"content": text}), None))],
                        _ => vec![],
                    },
                    _ => vec![],
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => vec![piece(self.chunk(json!({"content": delta["text"]}), None))],
                    Some("input_json_delta") => {
                        let index = data["index"].as_u64().unwrap_or(0);
                        let tool_index = self.tool_index.get(&index).copied().unwrap_or(0);
                        let delta = json!({"tool_calls": [{
                            "index": tool_index,
                            "function": {"arguments": delta["partial_json"]},
                        }]});
                        vec![piece(self.chunk(delta, None))]
                    }
                    _ => vec![],
                }
            }
            "message_delta" => {
                if let Some(output) = data["usage"]["output_tokens"].as_u64() {
                    self.output_tokens = output;
                }
                self.finish_reason = finish_reason(data["delta"]["stop_reason"].as_str());
                vec![piece(self.chunk(json!({}), self.finish_reason))]
            }
            "message_stop" => {
                let usage = Usage::new(self.input_tokens, self.output_tokens);
                let mut pieces = Vec::new();
                let usage_chunk = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                });
                pieces.push(StreamPiece {
                    bytes: data_event(&usage_chunk.to_string()),
                    usage: Some(usage),
                    usage_only: true,
                    has_content: false,
                });
                pieces.push(StreamPiece {
                    bytes: Bytes::from_static(DONE_EVENT),
                    usage: None,
                    usage_only: false,
                    has_content: false,
                });
                pieces
            }
            "error" => {
                let error = json!({"error": {
                    "message": data["error"]["message"],
                    "type": data["error"]["type"],
                    "param": null,
                    "code": null,
                }});
                vec![piece(data_event(&error.to_string()))]
            }
            _ => vec![], // ping, content_block_stop, unknown future events
        }
    }

    pub fn include_usage(&self) -> bool {
        self.include_usage
    }
}

fn translate_stream(
    response: UpstreamHttpResponse,
    timeouts: CallTimeouts,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<StreamPiece, Error>> + Send {
    async_stream::try_stream! {
        let mut decoder = StreamDecoder::new(StreamTranslator::new(include_usage));
        let mut chunks = super::UpstreamChunks::new(response, timeouts.body);
        while let Some(chunk) = chunks.next().await? {
            for piece in decoder.push(&chunk) {
                yield piece?;
            }
        }
    }
}

/// An Anthropic event stream's bytes in, OpenAI pieces out. Bytes may be split anywhere:
/// events are reassembled before they are translated.
#[derive(Debug)]
pub struct StreamDecoder {
    parser: SseParser,
    translator: StreamTranslator,
}

impl StreamDecoder {
    pub fn new(translator: StreamTranslator) -> Self {
        Self { parser: SseParser::new(), translator }
    }

    /// The pieces of every event completed by `chunk`; an event that is not JSON ends the
    /// list with an error (the stream is broken from there on).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<StreamPiece, Error>> {
        self.parser.push_slice(chunk);
        let mut out = Vec::new();
        while let Some(event) = self.parser.next_event() {
            if event.data().is_empty() {
                continue;
            }
            let data: Value = match serde_json::from_str(event.data()) {
                Ok(data) => data,
                Err(e) => {
                    out.push(Err(Error::BadGateway(format!("Anthropic sent an invalid event: {e}"))));
                    return out;
                }
            };
            let name = event
                .event
                .clone()
                .or_else(|| data["type"].as_str().map(str::to_owned))
                .unwrap_or_default();
            out.extend(self.translator.translate(&name, &data).into_iter().map(Ok));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string()).expect("valid request")
    }

    #[test]
    fn request_translation_moves_system_tools_and_tool_results() {
        let request = request(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "stop": "END",
            "temperature": 0.2
        }));
        let out = to_anthropic_request(&request, "claude-3-5-haiku").expect("translates");
        assert_eq!(out["system"], "be brief");
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(out["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");
        let messages = out["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[1]["content"][1]["input"]["city"], "Rome");
        let results = messages[2]["content"].as_array().expect("tool results");
        assert_eq!(results.len(), 2);
        assert_eq!(results[1]["tool_use_id"], "call_2");
    }

    #[test]
    fn json_mode_becomes_a_system_instruction_with_the_schema() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let out = to_anthropic_request(
            &request(json!({
                "model": "claude",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where?"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
            })),
            "claude-x",
        )
        .expect("translates");
        let system = out["system"].as_str().expect("system");
        assert!(system.starts_with("be brief\n\n") && system.contains("JSON Schema") && system.contains(&schema.to_string()), "{system}");
        assert!(out.get("response_format").is_none());
        let plain = to_anthropic_request(&request(json!({"model": "c", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})), "c")
            .expect("translates");
        assert!(plain["system"].as_str().is_some_and(|s| s.contains("one valid JSON object")), "{plain}");
        let bad = request(json!({"model": "c", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}));
        assert!(matches!(to_anthropic_request(&bad, "c"), Err(Error::InvalidRequest { param: Some("response_format"), .. })));
    }

    #[test]
    fn images_become_base64_or_url_blocks() {
        let out = to_anthropic_request(
            &request(json!({"model": "c", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "compare"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]}]})),
            "c",
        )
        .expect("translates");
        let blocks = &out["messages"][0]["content"];
        assert_eq!(blocks[0], json!({"type": "text", "text": "compare"}));
        assert_eq!(blocks[1], json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}));
        assert_eq!(blocks[2], json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}));
    }

    #[test]
    fn response_translation_maps_tool_use_and_stop_reason() {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 11, "output_tokens": 22}
        });
        let (completion, usage) = to_openai_completion(&message);
        assert_eq!(usage, Usage::new(11, 22));
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        let call = &completion["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "weather");
        let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or("")).expect("json");
        assert_eq!(arguments["city"], "Paris");
        assert_eq!(completion["usage"]["total_tokens"], 33);
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason(Some("end_turn")), Some("stop"));
        assert_eq!(finish_reason(Some("stop_sequence")), Some("stop"));
        assert_eq!(finish_reason(Some("max_tokens")), Some("length"));
        assert_eq!(finish_reason(Some("tool_use")), Some("tool_calls"));
        assert_eq!(finish_reason(None), None);
    }
}
