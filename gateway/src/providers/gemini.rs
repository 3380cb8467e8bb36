//! Google Gemini's native API (`models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` for streams), spoken to in its own format and answered
//! in OpenAI's, like [`super::anthropic`].
//!
//! Translated: system / developer messages (`systemInstruction`), user and assistant turns
//! (`contents`, roles `user` / `model`), text and image parts (data URLs become
//! `inline_data`; other URLs `file_data`), `max_tokens` / `max_completion_tokens`,
//! `temperature`, `top_p`, `stop`, `n` (`candidateCount`), and JSON mode (`response_format`
//! → `responseMimeType: application/json`, with `responseJsonSchema` for a schema). Tools and
//! tool turns are refused with a 400 for now.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Map, Value};

use super::{post_json, secret_header, translated_json, CallTimeouts, StreamPiece, UpstreamClient, UpstreamHttpResponse, UpstreamResponse};
use crate::error::Error;
use crate::openai::{content_text, unix_seconds, ChatRequest, Usage};
use crate::sse::{data_event, SseParser, DONE_EVENT};

pub struct GeminiProvider {
    /// `{base_url}/models/`, the model and the method are appended per call.
    models_url: String,
    headers: HeaderMap,
}

impl GeminiProvider {
    pub fn new(base_url: &str, api_key: Option<&str>, headers: HeaderMap) -> Result<Self, Error> {
        let mut headers = headers;
        if let Some(key) = api_key {
            headers.insert("x-goog-api-key", secret_header(key)?);
        }
        let models_url = format!("{}/models/", base_url.trim_end_matches('/'));
        reqwest::Url::parse(&models_url).map_err(|e| Error::Config(format!("invalid base_url `{base_url}`: {e}")))?;
        Ok(Self { models_url, headers })
    }

    pub async fn chat(
        &self,
        http: &UpstreamClient,
        request: &ChatRequest,
        upstream_model: &str,
        timeouts: CallTimeouts,
    ) -> Result<UpstreamResponse, Error> {
        let body = to_gemini_request(request)?;
        let method = if request.stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
        let url = reqwest::Url::parse(&format!("{}{upstream_model}:{method}", self.models_url))
            .map_err(|e| Error::Internal(format!("Gemini URL for `{upstream_model}`: {e}")))?;
        let response = post_json(http, &url, self.headers.clone(), &body, timeouts).await?;
        if !request.stream {
            return translated_json(response, timeouts, "Gemini", |answer| to_openai_completion(answer, upstream_model)).await;
        }
        Ok(UpstreamResponse::Stream(Box::pin(translate_stream(response, timeouts, upstream_model.to_owned()))))
    }
}

/// OpenAI chat request → Gemini `GenerateContentRequest`.
pub fn to_gemini_request(request: &ChatRequest) -> Result<Value, Error> {
    let body = request.body();
    if body.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) {
        return Err(Error::invalid_param("tools", "tools are not supported for Gemini models yet"));
    }
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for message in request.messages() {
        let role = match message.get("role").and_then(Value::as_str).unwrap_or_default() {
            "system" | "developer" => {
                system.push(json!({"text": content_text(message.get("content"))}));
                continue;
            }
            "user" => "user",
            "assistant" if message.get("tool_calls").is_none() => "model",
            "assistant" | "tool" => return Err(Error::invalid_param("messages", "tool turns are not supported for Gemini models yet")),
            other => return Err(Error::invalid_param("messages", format!("unsupported message role `{other}`"))),
        };
        let parts = parts(message.get("content"));
        // Gemini wants turns to alternate: consecutive turns of one role travel together.
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["parts"].as_array_mut() {
                    existing.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    if let Some(max) = body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64) {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"), ("seed", "seed")] {
        if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), value.clone());
        }
    }
    if let Some(stops) = super::stop_sequences(body) {
        config.insert("stopSequences".into(), stops);
    }
    match body.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let schema = body["response_format"]["json_schema"]
                .get("schema")
                .ok_or_else(|| Error::invalid_param("response_format", "`json_schema` needs `json_schema.schema`"))?;
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseJsonSchema".into(), schema.clone());
        }
        Some(_) => return Err(Error::invalid_param("response_format", "`response_format.type` must be text, json_object or json_schema")),
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

fn parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"text": item.get("text").and_then(Value::as_str).unwrap_or_default()})),
                Some("image_url") => {
                    let url = item.get("image_url").and_then(|i| i.get("url")).and_then(Value::as_str)?;
                    Some(image_part(url))
                }
                _ => None,
            })
            .collect(),
        other => vec![json!({"text": content_text(other)})],
    }
}

fn image_part(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((mime_type, data)) = rest.split_once(";base64,") {
            return json!({"inline_data": {"mime_type": mime_type, "data": data}});
        }
    }
    json!({"file_data": {"file_uri": url}})
}

/// Gemini's finish reason in OpenAI's words.
pub fn finish_reason(reason: Option<&str>) -> Option<&'static str> {
    Some(match reason? {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => "content_filter",
        _ => "stop",
    })
}

fn usage_of(answer: &Value) -> Usage {
    let field = |name: &str| answer["usageMetadata"][name].as_u64().unwrap_or(0);
    Usage::new(field("promptTokenCount"), field("candidatesTokenCount").saturating_add(field("thoughtsTokenCount")))
}

fn candidate_text(candidate: &Value) -> String {
    candidate["content"]["parts"]
        .as_array()
        .map(|parts| parts.iter().filter(|p| p["thought"] != true).filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default()
}

/// Gemini `GenerateContentResponse` → OpenAI chat.completion, and its usage.
pub fn to_openai_completion(answer: &Value, model: &str) -> (Value, Usage) {
    let usage = usage_of(answer);
    let choices: Vec<Value> = answer["candidates"]
        .as_array()
        .map(|candidates| {
            candidates
                .iter()
                .enumerate()
                .map(|(i, candidate)| {
                    json!({
                        "index": candidate["index"].as_u64().unwrap_or(i as u64),
                        "message": {"role": "assistant", "content": candidate_text(candidate)},
                        "logprobs": null,
                        "finish_reason": finish_reason(candidate["finishReason"].as_str()),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let completion = json!({
        "id": format!("chatcmpl-gemini-{}", answer["responseId"].as_str().unwrap_or_default()),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": answer["modelVersion"].as_str().unwrap_or(model),
        "choices": choices,
        "usage": usage,
    });
    (completion, usage)
}

/// Gemini SSE (each event a `GenerateContentResponse` with the next text) → OpenAI chunks,
/// then the usage chunk and `[DONE]`.
fn translate_stream(response: UpstreamHttpResponse, timeouts: CallTimeouts, model: String) -> impl futures_util::Stream<Item = Result<StreamPiece, Error>> + Send {
    async_stream::try_stream! {
        let id = format!("chatcmpl-gemini-{}", uuid::Uuid::now_v7().simple());
        let created = unix_seconds();
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        let mut parser = SseParser::new();
        let mut chunks = super::UpstreamChunks::new(response, timeouts.body);
        let mut usage = Usage::new(0, 0);
        let mut started = false;
        while let Some(piece) = chunks.next().await? {
            parser.push(piece);
            while let Some(event) = parser.next_event() {
                let Ok(answer) = serde_json::from_str::<Value>(event.data()) else { continue };
                if answer.get("usageMetadata").is_some() {
                    usage = usage_of(&answer);
                }
                let candidate = &answer["candidates"][0];
                let text = candidate_text(candidate);
                let finish = finish_reason(candidate["finishReason"].as_str());
                if !text.is_empty() || !started {
                    let delta = if started { json!({"content": text}) } else { json!({"role": "assistant", "content": text}) };
                    started = true;
                    yield StreamPiece { bytes: data_event(&chunk(delta, None).to_string()), usage: None, usage_only: false, has_content: !text.is_empty() };
                }
                if let Some(finish) = finish {
                    yield StreamPiece { bytes: data_event(&chunk(json!({}), Some(finish)).to_string()), usage: None, usage_only: false, has_content: false };
                }
            }
        }
        let usage_chunk = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage});
        yield StreamPiece { bytes: data_event(&usage_chunk.to_string()), usage: Some(usage), usage_only: true, has_content: false };
        yield StreamPiece { bytes: Bytes::from_static(DONE_EVENT), usage: None, usage_only: false, has_content: false };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string()).expect("valid request")
    }

    #[test]
    fn request_translation_moves_system_roles_images_and_config() {
        let out = to_gemini_request(&request(json!({
            "model": "gemini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "sure?"},
            ],
            "max_tokens": 50, "temperature": 0.3, "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        })))
        .expect("translates");
        assert_eq!(out["systemInstruction"], json!({"parts": [{"text": "be brief"}]}));
        assert_eq!(out["contents"][0]["parts"][1], json!({"inline_data": {"mime_type": "image/png", "data": "iVBO"}}));
        assert_eq!(out["contents"][1], json!({"role": "model", "parts": [{"text": "a cat"}]}));
        assert_eq!(out["generationConfig"]["maxOutputTokens"], 50);
        assert_eq!(out["generationConfig"]["stopSequences"], json!(["END"]));
        assert_eq!(out["generationConfig"]["responseMimeType"], "application/json");
        assert_eq!(out["generationConfig"]["responseJsonSchema"], json!({"type": "object"}));
        let tools = request(json!({"model": "g", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert!(matches!(to_gemini_request(&tools), Err(Error::InvalidRequest { param: Some("tools"), .. })));
    }

    #[test]
    fn response_translation_maps_text_finish_and_usage() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}, {"text": "lo"}]}, "finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6},
            "modelVersion": "gemini-2.0-flash",
        });
        let (completion, usage) = to_openai_completion(&answer, "g");
        assert_eq!(completion["choices"][0]["message"]["content"], "Hello");
        assert_eq!(completion["choices"][0]["finish_reason"], "length");
        assert_eq!(completion["model"], "gemini-2.0-flash");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 2));
    }
}
