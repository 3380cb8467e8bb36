//! A cached answer and the two ways it is replayed: a JSON body or an SSE stream.
//!
//! An answer that arrived as a stream keeps its chunks, so a streaming client gets them back
//! split exactly as the original was; it is also assembled into a JSON body when that can be
//! done faithfully (text answers and tool calls). An answer that arrived as JSON is cut into
//! chunks on demand for a streaming client.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What the cache stores for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The model that answered (for the `x-switchyard-model` header and the log).
    pub model: String,
    /// `chat.completion` body.
    pub json: Option<String>,
    /// The `data:` payloads of the original stream's chunks, in order, without the
    /// usage-only chunk and `[DONE]`.
    pub chunks: Option<Vec<String>>,
    /// The usage-only chunk's payload, replayed only to clients that ask for usage.
    pub usage_chunk: Option<String>,
}

impl CachedAnswer {
    /// From a JSON upstream answer.
    pub fn from_json(model: &str, body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let value: Value = serde_json::from_str(text).ok()?;
        answer_is_complete(&value).then(|| Self {
            model: model.to_owned(),
            json: Some(text.to_owned()),
            chunks: None,
            usage_chunk: None,
        })
    }

    /// From the payloads of a streamed answer (`data:` values, `[DONE]` excluded). `None`
    /// when the stream did not end with a finish reason on every choice (cut short: never
    /// cache a partial answer).
    pub fn from_stream(model: &str, payloads: &[&str]) -> Option<Self> {
        let mut chunks = Vec::with_capacity(payloads.len());
        let mut usage_chunk = None;
        let mut parsed = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let value: Value = serde_json::from_str(payload).ok()?;
            let usage_only = value.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty)
                && value.get("usage").is_some_and(|u| !u.is_null());
            if usage_only {
                usage_chunk = Some((*payload).to_owned());
            } else {
                chunks.push((*payload).to_owned());
            }
            parsed.push(value);
        }
        let assembled = assemble(&parsed)?;
        Some(Self {
            model: model.to_owned(),
            json: Some(assembled.to_string()),
            chunks: Some(chunks),
            usage_chunk,
        })
    }

    /// The answer's text (the first choice's message content), for comparing answers.
    pub fn text(&self) -> Option<String> {
        let value: Value = serde_json::from_str(self.json.as_deref()?).ok()?;
        let content = value.get("choices")?.get(0)?.get("message")?.get("content")?;
        match content {
            Value::String(text) => Some(text.clone()),
            Value::Array(parts) => Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()),
            _ => None,
        }
    }

    /// The JSON body to send.
    pub fn json_body(&self) -> Option<Bytes> {
        self.json.as_ref().map(|j| Bytes::from(j.clone()))
    }

    /// The SSE events to send, `[DONE]` included.
    pub fn sse_events(&self, include_usage: bool) -> Vec<Bytes> {
        let mut events: Vec<Bytes> = match (&self.chunks, &self.json) {
            (Some(chunks), _) => chunks.iter().map(|c| data_event(c)).collect(),
            (None, Some(json)) => match serde_json::from_str::<Value>(json) {
                Ok(value) => synthesize_chunks(&value).iter().map(|c| data_event(&c.to_string())).collect(),
                Err(_) => Vec::new(),
            },
            (None, None) => Vec::new(),
        };
        if include_usage {
            let usage = self.usage_chunk.clone().or_else(|| {
                let value: Value = serde_json::from_str(self.json.as_deref()?).ok()?;
                let usage = value.get("usage").filter(|u| !u.is_null())?.clone();
                Some(json!({"id": value.get("id"), "object": "chat.completion.chunk", "created": value.get("created"),
                    "model": value.get("model"), "choices": [], "usage": usage}).to_string())
            });
            if let Some(usage) = usage {
                events.push(data_event(&usage));
            }
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }

    /// Approximate heap size, for the cache's weigher.
    pub fn weight(&self) -> usize {
        self.model.len()
            + self.json.as_ref().map_or(0, String::len)
            + self.chunks.as_ref().map_or(0, |c| c.iter().map(|s| s.len() + 24).sum())
            + self.usage_chunk.as_ref().map_or(0, String::len)
            + 96
    }
}

fn data_event(payload: &str) -> Bytes {
    let mut event = String::with_capacity(payload.len() + 8);
    event.push_str("data: ");
    event.push_str(payload);
    event.push_str("\n\n");
    Bytes::from(event)
}

/// Every choice finished for a reason that leaves a whole answer (`length` is a cut answer,
/// but a whole one for the `max_tokens` asked; `content_filter` is not cached).
fn answer_is_complete(value: &Value) -> bool {
    let Some(choices) = value.get("choices").and_then(Value::as_array) else {
        return false;
    };
    !choices.is_empty()
        && choices.iter().all(|c| {
            matches!(
                c.get("finish_reason").and_then(Value::as_str),
                Some("stop" | "length" | "tool_calls" | "function_call")
            )
        })
}

/// Rebuilds the `chat.completion` body a stream stands for. `None` when a choice never
/// finished or a chunk has a shape this does not understand.
fn assemble(chunks: &[Value]) -> Option<Value> {
    #[derive(Default)]
    struct Choice {
        role: Option<String>,
        content: Option<String>,
        refusal: Option<String>,
        tool_calls: Vec<Map<String, Value>>,
        finish_reason: Option<String>,
        logprobs_seen: bool,
    }
    let mut choices: Vec<Choice> = Vec::new();
    let mut head: Option<&Value> = None;
    let mut usage = Value::Null;
    for chunk in chunks {
        if chunk.get("usage").is_some_and(|u| !u.is_null()) {
            usage = chunk["usage"].clone();
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            head.get_or_insert(chunk);
            let index = usize::try_from(choice.get("index").and_then(Value::as_u64)?).ok()?;
            if index > 127 {
                return None;
            }
            if choices.len() <= index {
                choices.resize_with(index + 1, Choice::default);
            }
            let slot = &mut choices[index];
            if choice.get("logprobs").is_some_and(|l| !l.is_null()) {
                slot.logprobs_seen = true;
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                slot.finish_reason = Some(reason.to_owned());
            }
            let Some(delta) = choice.get("delta") else { continue };
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                slot.role = Some(role.to_owned());
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                slot.content.get_or_insert_with(String::new).push_str(text);
            }
            if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
                slot.refusal.get_or_insert_with(String::new).push_str(text);
            }
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let call_index = usize::try_from(call.get("index").and_then(Value::as_u64)?).ok()?;
                if call_index > 127 {
                    return None;
                }
                if slot.tool_calls.len() <= call_index {
                    slot.tool_calls.resize_with(call_index + 1, Map::new);
                }
                let target = &mut slot.tool_calls[call_index];
                for field in ["id", "type"] {
                    if let Some(v) = call.get(field).filter(|v| !v.is_null()) {
                        target.insert(field.to_owned(), v.clone());
                    }
                }
                if let Some(function) = call.get("function") {
                    let entry = target.entry("function").or_insert_with(|| json!({}));
                    for field in ["name", "arguments"] {
                        if let Some(piece) = function.get(field).and_then(Value::as_str) {
                            let existing = entry.get(field).and_then(Value::as_str).unwrap_or("");
                            entry[field] = Value::String(format!("{existing}{piece}"));
                        }
                    }
                }
            }
        }
    }
    let head = head?;
    // Log-probabilities are not reassembled: such answers are replayed only as streams.
    if choices.is_empty() || choices.iter().any(|c| c.finish_reason.is_none() || c.logprobs_seen) {
        return None;
    }
    let body_choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let mut message = Map::new();
            message.insert("role".into(), json!(c.role.unwrap_or_else(|| "assistant".into())));
            message.insert("content".into(), c.content.map_or(Value::Null, Value::String));
            if let Some(refusal) = c.refusal {
                message.insert("refusal".into(), Value::String(refusal));
            }
            if !c.tool_calls.is_empty() {
                message.insert(
                    "tool_calls".into(),
                    Value::Array(c.tool_calls.into_iter().map(Value::Object).collect()),
                );
            }
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": c.finish_reason})
        })
        .collect();
    let body = json!({
        "id": head.get("id"),
        "object": "chat.completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "system_fingerprint": head.get("system_fingerprint"),
        "choices": body_choices,
        "usage": usage,
    });
    answer_is_complete(&body).then_some(body)
}

/// Chunks for a streaming client from an answer that arrived as JSON: a role chunk, the text
/// in pieces of a few words, tool calls whole, then the finish reason — the sequence OpenAI
/// itself sends.
fn synthesize_chunks(body: &Value) -> Vec<Value> {
    let head = |choices: Value| {
        json!({
            "id": body.get("id"), "object": "chat.completion.chunk", "created": body.get("created"),
            "model": body.get("model"), "system_fingerprint": body.get("system_fingerprint"), "choices": choices,
        })
    };
    let mut chunks = Vec::new();
    for choice in body.get("choices").and_then(Value::as_array).into_iter().flatten() {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let role = message.get("role").cloned().unwrap_or(json!("assistant"));
        chunks.push(head(json!([{"index": index, "delta": {"role": role, "content": ""}, "logprobs": null, "finish_reason": null}])));
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            for piece in split_words(text, 4) {
                chunks.push(head(json!([{"index": index, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}])));
            }
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let deltas: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(i);
                    call
                })
                .collect();
            chunks.push(head(json!([{"index": index, "delta": {"tool_calls": deltas}, "logprobs": null, "finish_reason": null}])));
        }
        let finish = choice.get("finish_reason").cloned().unwrap_or(json!("stop"));
        chunks.push(head(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}])));
    }
    chunks
}

/// Splits text after every `words` words, keeping every character.
fn split_words(text: &str, words: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut seen = 0;
    let mut in_word = false;
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if in_word {
                seen += 1;
                in_word = false;
                if seen == words {
                    pieces.push(&text[start..i]);
                    start = i;
                    seen = 0;
                }
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(events: &[Bytes]) -> Vec<Value> {
        events
            .iter()
            .filter_map(|e| std::str::from_utf8(e).ok())
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::trim)
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
            .collect()
    }

    #[test]
    fn json_answer_replays_as_a_stream_with_the_same_text() {
        let body = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France, of course."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}});
        let answer = CachedAnswer::from_json("m", body.to_string().as_bytes()).expect("complete");
        let events = answer.sse_events(true);
        assert_eq!(events.last().map(|b| &b[..]), Some(&b"data: [DONE]\n\n"[..]));
        let chunks = payloads(&events);
        assert!(chunks.len() > 3, "text is split into several chunks");
        let rebuilt = assemble(&chunks).expect("reassembles");
        assert_eq!(rebuilt["choices"][0]["message"]["content"], body["choices"][0]["message"]["content"]);
        assert_eq!(rebuilt["usage"], body["usage"]);
        let without_usage = payloads(&answer.sse_events(false));
        assert!(without_usage.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn streamed_answer_keeps_its_chunks_and_assembles_tool_calls() {
        let chunks = [
            r#"{"id":"s","object":"chat.completion.chunk","created":2,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"s","object":"chat.completion.chunk","created":2,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
            r#"{"id":"s","object":"chat.completion.chunk","created":2,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"s","object":"chat.completion.chunk","created":2,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"s","object":"chat.completion.chunk","created":2,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        ];
        let answer = CachedAnswer::from_stream("m", &chunks).expect("complete stream");
        assert_eq!(answer.chunks.as_ref().map(Vec::len), Some(4));
        assert!(answer.usage_chunk.is_some());
        let body: Value = serde_json::from_str(answer.json.as_deref().expect("assembled")).expect("json");
        let call = &body["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], r#"{"city":"Oslo"}"#);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["usage"]["total_tokens"], 7);
        // Replayed byte for byte, as the original was chunked.
        let replay = answer.sse_events(false);
        assert_eq!(replay.len(), 5);
        assert_eq!(&replay[1][..], format!("data: {}\n\n", chunks[1]).as_bytes());
    }

    #[test]
    fn partial_answers_are_not_cached() {
        let cut = [r#"{"id":"s","created":2,"model":"m","choices":[{"index":0,"delta":{"content":"Hal"},"finish_reason":null}]}"#];
        assert_eq!(CachedAnswer::from_stream("m", &cut), None);
        let filtered = json!({"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "content_filter"}]});
        assert_eq!(CachedAnswer::from_json("m", filtered.to_string().as_bytes()), None);
        assert_eq!(CachedAnswer::from_json("m", b"not json"), None);
    }

    #[test]
    fn words_split_without_losing_characters() {
        let text = "  one two  three four five\nsix ";
        assert_eq!(split_words(text, 2).concat(), text);
        assert_eq!(split_words("", 4), Vec::<&str>::new());
    }
}
