//! What makes two requests "the same question": the exact key and the semantic scope.
//!
//! Every top-level field of an OpenAI chat request is sorted into one of two groups: fields
//! that can change the answer (part of the key) and fields that only change how the answer is
//! delivered or accounted (not part of it). [`RequestParts`] names each known field, and the
//! hashing functions destructure it without `..`, so a field added to the struct does not
//! compile until someone decides which group it belongs to. Fields this version does not know
//! are kept in the key: an unknown parameter may change the answer, and a missed hit is cheap
//! while a wrong one is not.

use serde_json::{Map, Value};

/// A 32-byte blake3 digest.
pub type Digest = [u8; 32];

/// The top-level fields of a chat request, by role.
#[derive(Debug, Default, Clone)]
pub struct RequestParts<'a> {
    // Fields that change the answer.
    pub model: Option<&'a Value>,
    pub messages: Option<&'a Value>,
    pub tools: Option<&'a Value>,
    pub tool_choice: Option<&'a Value>,
    pub parallel_tool_calls: Option<&'a Value>,
    pub functions: Option<&'a Value>,
    pub function_call: Option<&'a Value>,
    pub response_format: Option<&'a Value>,
    pub temperature: Option<&'a Value>,
    pub top_p: Option<&'a Value>,
    pub max_tokens: Option<&'a Value>,
    pub max_completion_tokens: Option<&'a Value>,
    pub seed: Option<&'a Value>,
    pub n: Option<&'a Value>,
    pub stop: Option<&'a Value>,
    pub presence_penalty: Option<&'a Value>,
    pub frequency_penalty: Option<&'a Value>,
    pub logit_bias: Option<&'a Value>,
    pub logprobs: Option<&'a Value>,
    pub top_logprobs: Option<&'a Value>,
    pub reasoning_effort: Option<&'a Value>,
    pub verbosity: Option<&'a Value>,
    pub modalities: Option<&'a Value>,
    pub audio: Option<&'a Value>,
    pub prediction: Option<&'a Value>,
    pub web_search_options: Option<&'a Value>,
    /// Fields this version does not know, sorted by name; they are part of the key.
    pub unknown: Vec<(&'a str, &'a Value)>,
    // Fields that do not change the answer: delivery, accounting, tracing.
    /// JSON or SSE: a cached answer is replayed in either form.
    pub stream: Option<&'a Value>,
    pub stream_options: Option<&'a Value>,
    /// End-user id for abuse tracking; the tenant (from the key) scopes the cache instead.
    pub user: Option<&'a Value>,
    pub safety_identifier: Option<&'a Value>,
    pub metadata: Option<&'a Value>,
    pub store: Option<&'a Value>,
    pub service_tier: Option<&'a Value>,
    pub prompt_cache_key: Option<&'a Value>,
}

impl<'a> RequestParts<'a> {
    pub fn from_body(body: &'a Map<String, Value>) -> Self {
        let mut parts = Self::default();
        for (name, value) in body {
            let slot = match name.as_str() {
                "model" => &mut parts.model,
                "messages" => &mut parts.messages,
                "tools" => &mut parts.tools,
                "tool_choice" => &mut parts.tool_choice,
                "parallel_tool_calls" => &mut parts.parallel_tool_calls,
                "functions" => &mut parts.functions,
                "function_call" => &mut parts.function_call,
                "response_format" => &mut parts.response_format,
                "temperature" => &mut parts.temperature,
                "top_p" => &mut parts.top_p,
                "max_tokens" => &mut parts.max_tokens,
                "max_completion_tokens" => &mut parts.max_completion_tokens,
                "seed" => &mut parts.seed,
                "n" => &mut parts.n,
                "stop" => &mut parts.stop,
                "presence_penalty" => &mut parts.presence_penalty,
                "frequency_penalty" => &mut parts.frequency_penalty,
                "logit_bias" => &mut parts.logit_bias,
                "logprobs" => &mut parts.logprobs,
                "top_logprobs" => &mut parts.top_logprobs,
                "reasoning_effort" => &mut parts.reasoning_effort,
                "verbosity" => &mut parts.verbosity,
                "modalities" => &mut parts.modalities,
                "audio" => &mut parts.audio,
                "prediction" => &mut parts.prediction,
                "web_search_options" => &mut parts.web_search_options,
                "stream" => &mut parts.stream,
                "stream_options" => &mut parts.stream_options,
                "user" => &mut parts.user,
                "safety_identifier" => &mut parts.safety_identifier,
                "metadata" => &mut parts.metadata,
                "store" => &mut parts.store,
                "service_tier" => &mut parts.service_tier,
                "prompt_cache_key" => &mut parts.prompt_cache_key,
                _ => {
                    parts.unknown.push((name.as_str(), value));
                    continue;
                }
            };
            *slot = Some(value);
        }
        // serde_json's map is ordered by key already; sort anyway so the key never depends
        // on a feature flag of serde_json.
        parts.unknown.sort_by(|a, b| a.0.cmp(b.0));
        parts
    }

    /// Index of the last message when it is a user message (what the semantic cache embeds).
    pub fn last_user_index(&self) -> Option<usize> {
        let messages = self.messages?.as_array()?;
        let last = messages.len().checked_sub(1)?;
        (messages[last].get("role").and_then(Value::as_str) == Some("user")).then_some(last)
    }

    /// Whether any message is a tool (or legacy function) result.
    pub fn has_tool_results(&self) -> bool {
        self.messages
            .and_then(Value::as_array)
            .is_some_and(|messages| {
                messages
                    .iter()
                    .any(|m| matches!(m.get("role").and_then(Value::as_str), Some("tool" | "function")))
            })
    }

    /// The sampling temperature, with OpenAI's default of 1 when absent.
    pub fn temperature(&self) -> f64 {
        self.temperature.and_then(Value::as_f64).unwrap_or(1.0)
    }
}

/// Exact key: tenant + every answer-changing field, messages included.
pub fn exact_key(tenant: &str, parts: &RequestParts<'_>) -> Digest {
    let mut hasher = KeyHasher::new(b"switchyard-exact-v1\0");
    hash_str(&mut hasher, tenant);
    hash_answer_fields(&mut hasher, parts, MessagesInKey::All);
    hasher.finalize()
}

/// Semantic scope: tenant + every answer-changing field + the conversation before the last
/// user message. Two requests in one scope differ only in the text of their last user
/// message, which is what the embedding compares. `None` when the request has no last user
/// message to compare.
pub fn semantic_scope(tenant: &str, parts: &RequestParts<'_>) -> Option<Digest> {
    let last = parts.last_user_index()?;
    let mut hasher = KeyHasher::new(b"switchyard-scope-v1\0");
    hash_str(&mut hasher, tenant);
    hash_answer_fields(&mut hasher, parts, MessagesInKey::AllBut(last));
    Some(hasher.finalize())
}

/// Gathers a key's canonical encoding and hashes it in one call: a request is hundreds of
/// short fields, and blake3's per-`update` work was most of the cost of streaming them. The
/// digest is the same as streaming the pieces (blake3 hashes the concatenation either way),
/// so keys of entries stored before are unchanged.
struct KeyHasher {
    bytes: Vec<u8>,
}

impl KeyHasher {
    fn new(domain: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(1024);
        bytes.extend_from_slice(domain);
        Self { bytes }
    }

    fn update(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self
    }

    fn finalize(&self) -> Digest {
        *blake3::hash(&self.bytes).as_bytes()
    }
}

#[derive(Clone, Copy)]
enum MessagesInKey {
    All,
    /// Every message except this one's content (its role and other fields still count).
    AllBut(usize),
}

fn hash_answer_fields(hasher: &mut KeyHasher, parts: &RequestParts<'_>, messages_in_key: MessagesInKey) {
    // No `..`: a new field must be placed on one side or the other before this compiles.
    let RequestParts {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        functions,
        function_call,
        response_format,
        temperature,
        top_p,
        max_tokens,
        max_completion_tokens,
        seed,
        n,
        stop,
        presence_penalty,
        frequency_penalty,
        logit_bias,
        logprobs,
        top_logprobs,
        reasoning_effort,
        verbosity,
        modalities,
        audio,
        prediction,
        web_search_options,
        unknown,
        stream: _,
        stream_options: _,
        user: _,
        safety_identifier: _,
        metadata: _,
        store: _,
        service_tier: _,
        prompt_cache_key: _,
    } = parts;
    let named = [
        ("model", model),
        ("tools", tools),
        ("tool_choice", tool_choice),
        ("parallel_tool_calls", parallel_tool_calls),
        ("functions", functions),
        ("function_call", function_call),
        ("response_format", response_format),
        ("temperature", temperature),
        ("top_p", top_p),
        ("max_tokens", max_tokens),
        ("max_completion_tokens", max_completion_tokens),
        ("seed", seed),
        ("n", n),
        ("stop", stop),
        ("presence_penalty", presence_penalty),
        ("frequency_penalty", frequency_penalty),
        ("logit_bias", logit_bias),
        ("logprobs", logprobs),
        ("top_logprobs", top_logprobs),
        ("reasoning_effort", reasoning_effort),
        ("verbosity", verbosity),
        ("modalities", modalities),
        ("audio", audio),
        ("prediction", prediction),
        ("web_search_options", web_search_options),
    ];
    for (name, value) in named {
        hash_field(hasher, name, *value);
    }
    for (name, value) in unknown {
        hash_field(hasher, name, Some(value));
    }
    hasher.update(b"messages\0");
    match (messages_in_key, messages.and_then(Value::as_array)) {
        (MessagesInKey::All, _) | (_, None) => hash_value(hasher, messages.unwrap_or(&Value::Null)),
        (MessagesInKey::AllBut(skip), Some(list)) => {
            hasher.update(&(list.len() as u64).to_le_bytes());
            for (i, message) in list.iter().enumerate() {
                match (i == skip, message.as_object()) {
                    (true, Some(object)) => {
                        let mut rest = object.clone();
                        rest.remove("content");
                        hash_value(hasher, &Value::Object(rest));
                    }
                    _ => hash_value(hasher, message),
                }
            }
        }
    }
}

fn hash_field(hasher: &mut KeyHasher, name: &str, value: Option<&Value>) {
    hash_str(hasher, name);
    match value {
        // Absent and null mean the same to OpenAI: the default.
        None | Some(Value::Null) => {
            hasher.update(&[0]);
        }
        Some(value) => {
            hasher.update(&[1]);
            hash_value(hasher, value);
        }
    }
}

fn hash_str(hasher: &mut KeyHasher, text: &str) {
    hasher.update(&(text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// Canonical hashing of a JSON value: object keys in order, every string and array
/// length-prefixed (so no two values share an encoding), numbers by value (`0` and `0.0`
/// are the same temperature).
fn hash_value(hasher: &mut KeyHasher, value: &Value) {
    match value {
        Value::Null => {
            hasher.update(b"n");
        }
        Value::Bool(b) => {
            hasher.update(if *b { b"t" } else { b"f" });
        }
        Value::Number(number) => {
            // Integers (and floats with no fraction) as integers, other floats by their bits.
            if let Some(i) = number.as_i64() {
                hasher.update(b"i").update(&i.to_le_bytes());
            } else if let Some(u) = number.as_u64() {
                hasher.update(b"u").update(&u.to_le_bytes());
            } else {
                let f = number.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.0e18 {
                    hasher.update(b"i").update(&(f as i64).to_le_bytes());
                } else {
                    hasher.update(b"f").update(&f.to_bits().to_le_bytes());
                }
            }
        }
        Value::String(text) => {
            hasher.update(b"s");
            hash_str(hasher, text);
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update(&(items.len() as u64).to_le_bytes());
            for item in items {
                hash_value(hasher, item);
            }
        }
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            hasher.update(b"{");
            hasher.update(&(keys.len() as u64).to_le_bytes());
            for key in keys {
                hash_str(hasher, key);
                hash_value(hasher, &object[key]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("object expected"),
        }
    }

    fn key(tenant: &str, value: Value) -> Digest {
        let body = body(value);
        exact_key(tenant, &RequestParts::from_body(&body))
    }

    fn scope(tenant: &str, value: Value) -> Option<Digest> {
        let body = body(value);
        semantic_scope(tenant, &RequestParts::from_body(&body))
    }

    fn base() -> Value {
        json!({"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut request = base();
        request[field] = value;
        request
    }

    /// Keys are stored with cache entries (database, Redis), so a restart or another replica
    /// finds them only if the same request still hashes to the same digest: these were
    /// computed when keys were streamed into blake3 piece by piece.
    #[test]
    fn keys_of_a_fixed_request_do_not_change() {
        let request = json!({
            "model": "auto", "temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "seed": 7,
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
        });
        let hex = |d: Digest| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let exact = hex(key("acme", request.clone()));
        let scope = hex(scope("acme", request).expect("a last user message"));
        assert_eq!(exact, "3e0e6968bb4b3bf8ec749728b06710c8c51227eb4ae1203a13bc503398dd909d", "exact key");
        assert_eq!(scope, "13451f139cff0f0fe0c980df1bc3e742adb1655ddf7bfb58be4f7727c596a56a", "semantic scope");
    }

    /// The parameters of OpenAI's chat-completions API (2025-2026). A parameter missing from
    /// `RequestParts` would land in `unknown`, which is safe but means nobody decided; this
    /// test fails until someone does.
    #[test]
    fn every_openai_parameter_is_classified() {
        let parameters = [
            "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
            "response_format", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "n", "stop",
            "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "reasoning_effort",
            "verbosity", "modalities", "audio", "prediction", "web_search_options", "stream", "stream_options",
            "user", "safety_identifier", "metadata", "store", "service_tier", "prompt_cache_key",
        ];
        let mut request = Map::new();
        for name in parameters {
            request.insert(name.to_owned(), json!(1));
        }
        let parts = RequestParts::from_body(&request);
        assert!(parts.unknown.is_empty(), "unclassified: {:?}", parts.unknown);
    }

    #[test]
    fn answer_changing_fields_change_the_key() {
        let original = key("t", base());
        for (field, value) in [
            ("temperature", json!(0.7)),
            ("top_p", json!(0.5)),
            ("max_tokens", json!(16)),
            ("seed", json!(7)),
            ("n", json!(2)),
            ("stop", json!(["\n"])),
            ("tools", json!([{"type": "function", "function": {"name": "f"}}])),
            ("tool_choice", json!("required")),
            ("response_format", json!({"type": "json_object"})),
            ("logit_bias", json!({"1": 5})),
            ("x_vendor_knob", json!(true)),
        ] {
            assert_ne!(key("t", with(field, value.clone())), original, "{field} must be in the key");
            assert_ne!(scope("t", with(field, value)), scope("t", base()), "{field} must be in the scope");
        }
        assert_ne!(key("t", with("model", json!("gpt-4o"))), original);
        assert_ne!(key("other", base()), original, "tenant is part of the key");
        assert_ne!(scope("other", base()), scope("t", base()), "tenant is part of the scope");
    }

    #[test]
    fn delivery_fields_do_not_change_the_key() {
        let original = key("t", base());
        for (field, value) in [
            ("stream", json!(true)),
            ("stream_options", json!({"include_usage": true})),
            ("user", json!("u-1")),
            ("metadata", json!({"a": "b"})),
            ("store", json!(false)),
            ("service_tier", json!("auto")),
            ("temperature", Value::Null),
        ] {
            assert_eq!(key("t", with(field, value)), original, "{field} must not be in the key");
        }
    }

    #[test]
    fn numbers_hash_by_value_and_maps_by_content() {
        assert_eq!(key("t", with("temperature", json!(0))), key("t", with("temperature", json!(0.0))));
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "x", "name": "n"}]});
        let b = json!({"messages": [{"name": "n", "content": "x", "role": "user"}], "model": "m"});
        assert_eq!(key("t", a), key("t", b));
        // Length prefixes: moving a character between two strings changes the key.
        let c = json!({"model": "m", "messages": [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]});
        let d = json!({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]});
        assert_ne!(key("t", c), key("t", d));
    }

    #[test]
    fn scope_ignores_only_the_last_user_text() {
        let ask = |history: &str, last: &str| {
            json!({"model": "auto", "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": history},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": last},
            ]})
        };
        assert_eq!(scope("t", ask("h", "one")), scope("t", ask("h", "two")));
        assert_ne!(scope("t", ask("h", "one")), scope("t", ask("other history", "one")));
        assert_ne!(key("t", ask("h", "one")), key("t", ask("h", "two")));
        // A conversation that ends on an assistant or tool message has no question to compare.
        let ends_with_tool = json!({"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r", "tool_call_id": "1"}]});
        assert_eq!(scope("t", ends_with_tool.clone()), None);
        assert!(RequestParts::from_body(&body(ends_with_tool)).has_tool_results());
    }
}
