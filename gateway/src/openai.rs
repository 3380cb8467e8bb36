//! The OpenAI chat-completions request as the gateway sees it.
//!
//! The client's body is kept as it came, so that fields the gateway does not know (new OpenAI
//! parameters, vendor extensions) reach the upstream byte for byte; only the few fields the
//! gateway acts on are read and checked. Parsing finds each top-level member's bytes without
//! building a JSON tree (a `serde_json::Value` map and its re-serialisation were 6% of the
//! gateway's instructions on a passthrough request with a one-line question, and over half with
//! 8 KB of conversation); providers that translate the request get the tree, built once on
//! first use.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::json;

#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The client's body as sent.
    raw: Bytes,
    /// The top-level members, each key once (the last occurrence wins, as in any JSON map).
    members: Vec<json::MemberSpan>,
    /// Where each message's role (the string's text, between its quotes) and content are.
    messages: Vec<MessageSpan>,
    /// The body as a JSON tree, for providers that translate it; built on first use.
    tree: OnceLock<Map<String, Value>>,
    /// What the client asked for: a model name or a route name.
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the final usage chunk of a stream (its last
    /// `stream_options.include_usage` is `true`).
    pub client_wants_usage: bool,
}

#[derive(Debug, Clone)]
struct MessageSpan {
    role: Range<usize>,
    content: Option<Range<usize>>,
}

impl ChatRequest {
    /// Parses and checks a request body. Errors name the offending parameter.
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Self, Error> {
        let raw: Bytes = bytes.into();
        let Some((is_object, index)) = json::index_object(&raw, b"messages") else {
            let reason = serde_json::from_slice::<Value>(&raw).err().map(|e| e.to_string()).unwrap_or_else(|| "not UTF-8".into());
            return Err(Error::invalid(format!("request body is not valid JSON: {reason}")));
        };
        if !is_object {
            return Err(Error::invalid("request body must be a JSON object"));
        }
        let members = unique(&raw, index.members);
        let member = |name: &str| members.iter().find(|m| written_is(&raw[m.key.clone()], name));
        let value_of = |name: &str| member(name).map(|m| &raw[m.value.clone()]);
        let model = match value_of("model") {
            Some(value) => match string_value(value) {
                Some(model) if !model.is_empty() => model,
                _ => return Err(Error::invalid_param("model", "`model` must be a non-empty string")),
            },
            None => return Err(Error::invalid_param("model", "you must provide a model parameter")),
        };
        let messages = match member("messages") {
            Some(m) => message_spans(&raw, m, &index.items, &index.item_members)?,
            None => return Err(Error::invalid_param("messages", "missing required parameter: `messages`")),
        };
        let stream = match value_of("stream") {
            None | Some(b"null" | b"false") => false,
            Some(b"true") => true,
            Some(_) => return Err(Error::invalid_param("stream", "`stream` must be a boolean")),
        };
        // The last `include_usage` counts, as a JSON map (and so an upstream) reads it.
        let client_wants_usage = value_of("stream_options").is_some_and(|options| {
            json::members(options)
                .filter(|m| written_is(&options[m.key.clone()], "include_usage"))
                .last()
                .is_some_and(|m| &options[m.value] == b"true")
        });
        Ok(Self { raw, members, messages, tree: OnceLock::new(), model, stream, client_wants_usage })
    }

    /// The top-level members as the client sent them.
    pub fn members(&self) -> impl Iterator<Item = Member<'_>> {
        self.members.iter().map(|m| Member { key: &self.raw[m.key.clone()], value: &self.raw[m.value.clone()] })
    }

    /// The size of the client's body in bytes.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// The body as a JSON tree (built on the first call), for providers that translate it.
    pub fn body(&self) -> &Map<String, Value> {
        // `parse` checked that the body is a JSON object, so this cannot come out empty.
        self.tree.get_or_init(|| serde_json::from_slice(&self.raw).unwrap_or_default())
    }

    pub fn messages(&self) -> &[Value] {
        self.body().get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The text of the last user message, which is what routing and the semantic cache
    /// look at. Content parts of other types (images) are skipped.
    pub fn last_user_text(&self) -> String {
        let last_user = self.messages.iter().rev().find(|m| written_is(&self.raw[m.role.clone()], "user"));
        let Some(content) = last_user.and_then(|m| m.content.clone()) else { return String::new() };
        let content = &self.raw[content];
        if let Some(text) = string_value(content) {
            return text;
        }
        content_text(serde_json::from_slice::<Value>(content).ok().as_ref())
    }
}

/// A top-level member of the request as the client wrote it.
pub struct Member<'a> {
    /// The key between its quotes, escapes as written.
    pub key: &'a [u8],
    /// The value's JSON.
    pub value: &'a [u8],
}

impl Member<'_> {
    pub fn is(&self, name: &str) -> bool {
        written_is(self.key, name)
    }
}

/// Whether a string written as `written` (between its quotes) reads `name`.
fn written_is(written: &[u8], name: &str) -> bool {
    json::text_of(written).as_ref() == name.as_bytes()
}

/// The text of a JSON string value (`None` when it is not a string).
fn string_value(value: &[u8]) -> Option<String> {
    let written = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    String::from_utf8(json::text_of(written).into_owned()).ok()
}

/// The members with each key once, the last occurrence kept (as a JSON map reads them).
fn unique(raw: &[u8], mut members: Vec<json::MemberSpan>) -> Vec<json::MemberSpan> {
    let count = members.len();
    let written = |i: usize| &raw[members[i].key.clone()];
    let repeated: Vec<bool> = if count <= 16 && (0..count).all(|i| !written(i).contains(&b'\\')) {
        // The usual case: a few keys without escapes, compared as written.
        if (0..count).all(|i| (i + 1..count).all(|j| written(i) != written(j))) {
            return members;
        }
        (0..count).map(|i| (i + 1..count).any(|j| written(i) == written(j))).collect()
    } else {
        let keys: Vec<Cow<'_, [u8]>> = (0..count).map(|i| json::text_of(written(i))).collect();
        // A stable sort brings a key's occurrences together, in order: all but the last go.
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
        let mut repeated = vec![false; count];
        for pair in order.windows(2) {
            repeated[pair[0]] = keys[pair[0]] == keys[pair[1]];
        }
        repeated
    };
    let mut index = 0;
    members.retain(|_| {
        index += 1;
        !repeated[index - 1]
    });
    members
}

/// Checks the `messages` member (a non-empty array of objects, each with a string `role`)
/// and finds each message's role and content, from the index of the body.
fn message_spans(raw: &[u8], messages: &json::MemberSpan, items: &[json::ItemSpan], item_members: &[json::MemberSpan]) -> Result<Vec<MessageSpan>, Error> {
    if raw[messages.value.start] != b'[' {
        return Err(Error::invalid_param("messages", "`messages` must be an array"));
    }
    // Items of an earlier `messages` (a repeated key) are not this one's.
    let mine = items.iter().filter(|item| item.value.start > messages.value.start && item.value.end < messages.value.end);
    let mut spans = Vec::new();
    for (i, item) in mine.enumerate() {
        let (mut role, mut content) = (None, None);
        for m in item.members.clone().map(|r| &item_members[r]).unwrap_or_default() {
            if written_is(&raw[m.key.clone()], "role") {
                role = Some(m.value.clone());
            } else if written_is(&raw[m.key.clone()], "content") {
                content = Some(m.value.clone());
            }
        }
        // The role must be a string; its text is kept between the quotes.
        match role.filter(|r| raw[r.start] == b'"') {
            Some(r) => spans.push(MessageSpan { role: r.start + 1..r.end - 1, content }),
            None => return Err(Error::invalid_param("messages", format!("messages[{i}] must be an object with a string `role`"))),
        }
    }
    if spans.is_empty() {
        return Err(Error::invalid_param("messages", "`messages` must not be empty"));
    }
    Ok(spans)
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
/// of the gateway's own. This walks the top-level members ([`json::members`]) and hands only
/// the `usage` value to serde. A body that is not a JSON object, or is cut short before
/// `usage`, has none.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    let usage = json::members(body).find(|m| &body[m.key.clone()] == b"usage")?;
    let usage = &body[usage.value];
    plain_usage(usage).or_else(|| serde_json::from_slice::<Option<Usage>>(usage).ok().flatten())
}

/// The usual `usage`, read without serde (which costs more than the rest of the scan): an
/// object, whole, whose counts are plain non-negative integers, each once, other members skipped.
/// Anything else (`null`, a count written `3.0`, a repeated key, a count missing) is left to
/// serde, so the two always agree.
fn plain_usage(usage: &[u8]) -> Option<Usage> {
    let (mut prompt, mut completion, mut total) = (None, None, None);
    let mut members = json::members(usage);
    for m in members.by_ref() {
        let slot = match &usage[m.key.clone()] {
            b"prompt_tokens" => &mut prompt,
            b"completion_tokens" => &mut completion,
            b"total_tokens" => &mut total,
            _ => continue,
        };
        let digits = &usage[m.value];
        if slot.is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        *slot = Some(std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?);
    }
    if !members.reached_the_end() {
        return None;
    }
    Some(Usage { prompt_tokens: prompt?, completion_tokens: completion?, total_tokens: total.unwrap_or(0) })
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
        match ChatRequest::parse(body.to_owned()) {
            Err(Error::InvalidRequest { param, .. }) => param.map(str::to_owned),
            other => panic!("expected invalid request, got {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_kept() {
        let request = ChatRequest::parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2},"x_vendor":true}"#,
        )
        .expect("valid");
        assert_eq!(request.body()["x_vendor"], Value::Bool(true));
        assert_eq!(request.body()["logit_bias"]["1"], 2);
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
    fn a_repeated_key_keeps_its_last_value_and_escaped_keys_are_read() {
        let request = ChatRequest::parse(
            r#"{"model":"first","messages":[{"role":"system","content":"x"}],"stream":true,"model":"second","m\u0065ssages":[{"r\u006fle":"us\u0065r","content":"hello"}],"stream":false}"#,
        )
        .expect("valid");
        assert_eq!(request.model, "second");
        assert!(!request.stream);
        assert_eq!(request.last_user_text(), "hello");
        assert_eq!(request.members().count(), 3, "each key once");
        assert_eq!(request.body()["messages"][0]["role"], "user");
        // Not JSON, or JSON but not an object: no parameter to name.
        for body in ["{\"model\":\"m\",}", "\"text\"", "{\"model\":\"m\"} x", "{\"a\":\"\u{1}\"}"] {
            assert_eq!(error_param(body), None, "{body}");
        }
        assert_eq!(error_param(r#"{"model":"m","messages":[{"role":"user"},5]}"#).as_deref(), Some("messages"));
        assert_eq!(error_param(r#"{"model":"m","messages":[{"role":1}]}"#).as_deref(), Some("messages"));
        assert_eq!(error_param(r#"{"model":"m","messages":{"role":"user"}}"#).as_deref(), Some("messages"));
        assert_eq!(error_param(r#"{"model":5,"messages":[{"role":"user"}]}"#).as_deref(), Some("model"));
    }

    #[test]
    fn last_user_text_reads_parts() {
        let request = ChatRequest::parse(
            r#"{"model":"m","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"a"},{"role":"user","content":[{"type":"text","text":"second"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
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
        let plain = br#"{"usage":{"completion_tokens":4,"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}}"#;
        assert_eq!(usage_of(plain), Some(Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 0 }));
        for body in [
            &br#"[{"usage":{"prompt_tokens":3,"completion_tokens":4}}]"#[..],
            br#"{"id":"x","usage":{"prompt_tokens":3,"#,
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7"#,
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens":5}}"#,
            br#"{"usage":{"prompt_tokens":3.0,"completion_tokens":4}}"#,
            br#"{"usage":{"prompt_tokens":-3,"completion_tokens":4}}"#,
            br#"{"usage":{"prompt_tokens":03,"completion_tokens":4}}"#,
            br#"{"usage":null}"#,
            br#"{"usage":{"prompt_tokens":"3"}}"#,
            b"",
            b"{",
        ] {
            assert_eq!(usage_of(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
