//! The OpenAI chat-completions request as the gateway sees it.
//!
//! The body is kept as a JSON object so that fields the gateway does not know (new OpenAI
//! parameters, vendor extensions) reach the upstream untouched; only the few fields the
//! gateway acts on are read and checked.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The whole request object, as sent by the client.
    pub body: Map<String, Value>,
    /// What the client asked for: a model name or a route name.
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the final usage chunk of a stream.
    pub client_wants_usage: bool,
}

impl ChatRequest {
    /// Parses and checks a request body. Errors name the offending parameter.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("request body is not valid JSON: {e}")))?;
        let Value::Object(body) = value else {
            return Err(Error::invalid("request body must be a JSON object"));
        };
        let model = match body.get("model") {
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            Some(_) => return Err(Error::invalid_param("model", "`model` must be a non-empty string")),
            None => return Err(Error::invalid_param("model", "you must provide a model parameter")),
        };
        match body.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => {
                for (i, message) in messages.iter().enumerate() {
                    let role = message.get("role").and_then(Value::as_str);
                    if role.is_none() {
                        return Err(Error::invalid_param(
                            "messages",
                            format!("messages[{i}] must be an object with a string `role`"),
                        ));
                    }
                }
            }
            Some(Value::Array(_)) => {
                return Err(Error::invalid_param("messages", "`messages` must not be empty"))
            }
            Some(_) => return Err(Error::invalid_param("messages", "`messages` must be an array")),
            None => return Err(Error::invalid_param("messages", "missing required parameter: `messages`")),
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(_) => return Err(Error::invalid_param("stream", "`stream` must be a boolean")),
        };
        let client_wants_usage = body
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            body,
            model,
            stream,
            client_wants_usage,
        })
    }

    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The text of the last user message, which is what routing and the semantic cache
    /// look at. Content parts of other types (images) are skipped.
    pub fn last_user_text(&self) -> String {
        self.messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| content_text(m.get("content")))
            .unwrap_or_default()
    }
}

/// The text of an OpenAI `content` field: a string, or the text parts of an array.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            texts.join("\n")
        }
        _ => String::new(),
    }
}

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            // Counts come from upstreams: saturate rather than overflow on absurd ones.
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// Reads the top-level `usage` of a response body without parsing the rest of it.
///
/// Every non-stream answer passes through here, and serde skipping the other fields (the
/// answer's text, validated as UTF-8 byte by byte) was ~6,000 instructions a request, about 6%
/// of the gateway's own. This walks the top-level object's keys, steps over their values by
/// their brackets and string quotes, and hands only the `usage` value to serde. A body that is
/// not a JSON object, or is cut short before `usage`, has none.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    let mut at = skip_whitespace(body, 0);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_whitespace(body, at);
        if body.get(at) != Some(&b'"') {
            return None; // `}` (no usage) or not an object key
        }
        let key_end = string_end(body, at)?;
        let key = &body[at + 1..key_end - 1];
        at = skip_whitespace(body, key_end);
        if body.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(body, at + 1);
        if key == b"usage" {
            let mut value = serde_json::Deserializer::from_slice(&body[at..]);
            return Option::<Usage>::deserialize(&mut value).ok().flatten();
        }
        at = skip_whitespace(body, value_end(body, at)?);
        match body.get(at) {
            Some(b',') => at += 1,
            _ => return None,
        }
    }
}

/// JSON's whitespace (not `u8::is_ascii_whitespace`, which has form feed too).
fn is_json_whitespace(byte: &u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_whitespace(body: &[u8], mut at: usize) -> usize {
    while body.get(at).is_some_and(is_json_whitespace) {
        at += 1;
    }
    at
}

/// Just past the string that opens at `start` (a `"`), stepping over escapes. Most of an
/// answer's bytes are in strings: `memchr` jumps to the next quote or backslash.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
        if body.get(at) == Some(&b'"') {
            return Some(at + 1);
        }
        at += 2;
    }
}

/// Just past the value that starts at `start`: a string, an object or array (to its matching
/// bracket, strings inside stepped over), or a number / literal (to the next delimiter).
fn value_end(body: &[u8], start: usize) -> Option<usize> {
    match body.get(start)? {
        b'"' => string_end(body, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            loop {
                match body.get(at)? {
                    b'"' => {
                        at = string_end(body, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => {
            let mut at = start;
            while body.get(at).is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !is_json_whitespace(b)) {
                at += 1;
            }
            (at > start).then_some(at)
        }
    }
}

/// The first choice's message text of a chat.completion body, if it has one.
pub fn answer_text(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.get("choices")?.get(0)?.get("message")?;
    let text = content_text(message.get("content"));
    (!text.is_empty()).then_some(text)
}

/// Seconds since the Unix epoch, as OpenAI's `created` has them.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_param(body: &str) -> Option<String> {
        match ChatRequest::parse(body.as_bytes()) {
            Err(Error::InvalidRequest { param, .. }) => param.map(str::to_owned),
            other => panic!("expected invalid request, got {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_kept() {
        let request = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2},"x_vendor":true}"#,
        )
        .expect("valid");
        assert_eq!(request.body["x_vendor"], Value::Bool(true));
        assert_eq!(request.body["logit_bias"]["1"], 2);
        assert!(!request.stream);
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        assert_eq!(error_param(r#"{"messages":[]}"#).as_deref(), Some("model"));
        assert_eq!(error_param(r#"{"model":"m"}"#).as_deref(), Some("messages"));
        assert_eq!(error_param(r#"{"model":"m","messages":[]}"#).as_deref(), Some("messages"));
        assert_eq!(error_param(r#"{"model":"m","messages":[{"content":"x"}]}"#).as_deref(), Some("messages"));
        assert_eq!(
            error_param(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(error_param("{not json").as_deref(), None);
        assert_eq!(error_param("[1,2]").as_deref(), None);
    }

    #[test]
    fn last_user_text_reads_parts() {
        let request = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"a"},{"role":"user","content":[{"type":"text","text":"second"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        )
        .expect("valid");
        assert_eq!(request.last_user_text(), "second");
    }

    #[test]
    fn usage_is_read_from_a_body() {
        let usage = usage_of(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#);
        assert_eq!(usage, Some(Usage::new(3, 4)));
        assert_eq!(usage_of(br#"{"id":"x"}"#), None);
        let expected = Some(Usage::new(3, 4));
        // Wherever it is, with whitespace, after values of every kind.
        let body = br#" { "usage" : {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7} , "id": "x" }"#;
        assert_eq!(usage_of(body), expected);
        let body = br#"{"n":-1.5e3,"ok":true,"none":null,"list":[1,[2,{"a":"]"}]],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(usage_of(body), expected);
        // Only the top level's: not one inside a choice, nor one written in the answer's text.
        let body = br#"{"choices":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}],"text":"\\\"usage\":{\"prompt_tokens\":8} \\","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(usage_of(body), expected);
        let body = br#"{"choices":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}],"content":"usage"}"#;
        assert_eq!(usage_of(body), None);
        // Not an object, cut short, or a usage that is null or not usage.
        for body in [&br#"[{"usage":{"prompt_tokens":3,"completion_tokens":4}}]"#[..], br#"{"id":"x","usage":{"prompt_tokens":3,"#, br#"{"usage":null}"#, br#"{"usage":{"prompt_tokens":"3"}}"#, b"", b"{"] {
            assert_eq!(usage_of(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
