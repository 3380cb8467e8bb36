//! Property tests (bounded case counts, seconds in the normal suite) over the places where the
//! gateway reads bytes it does not control: the client's request body (and the JSON reader
//! under it), the `usage` of an upstream's answer and the Anthropic event stream.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use gateway::json;
use gateway::openai::{content_text, usage_of, ChatRequest, Usage};
use gateway::providers::anthropic::{to_anthropic_request, StreamDecoder, StreamTranslator};
use gateway::providers::openai::upstream_body;
use gateway::Error;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![Just("user"), Just("assistant"), Just("system"), Just("tool"), Just("text")]
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Field names the parsers look at, plus random ones.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "model", "messages", "role", "content", "stream", "stream_options", "include_usage", "type", "text",
            "tools", "tool_choice", "tool_calls", "function", "name", "arguments", "max_tokens", "stop", "id",
            "message", "usage", "input_tokens", "output_tokens", "delta", "index", "content_block", "partial_json",
            "stop_reason", "error", "image_url", "tool_call_id", "temperature", "n",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

/// A JSON object shaped like a chat request, with arbitrary values in its fields.
fn request_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![".{0,8}".prop_map(Value::String), any_json()],
        prop::collection::vec(
            (any_json(), any_json(), any::<bool>()).prop_map(|(role, content, sane)| {
                if sane {
                    json!({"role": "user", "content": content})
                } else {
                    json!({"role": role, "content": content})
                }
            }),
            0..4,
        ),
        any_json(),
        any_json(),
        prop::collection::btree_map(field_name(), any_json(), 0..4),
    )
        .prop_map(|(model, messages, stream, options, extra)| {
            let mut body: Map<String, Value> = extra.into_iter().collect();
            body.insert("model".into(), model);
            body.insert("messages".into(), Value::Array(messages));
            body.insert("stream".into(), stream);
            body.insert("stream_options".into(), options);
            Value::Object(body)
        })
}

fn is_invalid_request(result: &Result<ChatRequest, Error>) -> bool {
    matches!(result, Ok(_) | Err(Error::InvalidRequest { .. }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let result = ChatRequest::parse(bytes);
        prop_assert!(is_invalid_request(&result));
        if let Err(error) = result {
            prop_assert_eq!(error.status().as_u16(), 400);
        }
    }

    #[test]
    fn parse_never_panics_on_json(value in any_json()) {
        let result = ChatRequest::parse(value.to_string());
        prop_assert!(is_invalid_request(&result));
        // Only objects can be requests.
        if !value.is_object() {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn parse_checks_request_shaped_json(value in request_like()) {
        let result = ChatRequest::parse(value.to_string());
        prop_assert!(is_invalid_request(&result));
        match result {
            Ok(request) => {
                // What parse accepted, it read faithfully.
                prop_assert_eq!(Some(request.model.as_str()), value["model"].as_str());
                prop_assert_eq!(request.stream, value["stream"].as_bool().unwrap_or(false));
                prop_assert!(!request.messages().is_empty());
                // And the Anthropic translation of it does not panic either.
                let translated = to_anthropic_request(&request, "claude-x");
                let translated_ok = matches!(translated, Ok(_) | Err(Error::InvalidRequest { .. }));
                prop_assert!(translated_ok);
                let _ = request.last_user_text();
            }
            Err(error) => {
                let body = error.body();
                prop_assert_eq!(&body["error"]["type"], "invalid_request_error");
            }
        }
    }
}

/// What the JSON reader is held to: UTF-8, and serde_json's grammar.
fn serde_accepts(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// JSON text, then up to three edits (a byte replaced, inserted or removed) with bytes that
/// matter to JSON's grammar: most results are near-misses of JSON, some still JSON.
fn json_near_misses() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, prop::sample::select(br#"{}[]",:\ -+.eE0159tfnulr"#.to_vec()));
    (any_json(), any::<bool>(), prop::collection::vec(edit, 0..4)).prop_map(|(value, pretty, edits)| {
        let mut bytes = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.expect("serialise");
        for (at, kind, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    })
}

/// The text of the last user message, read from a full parse.
fn last_user_text_by_full_parse(value: &Value) -> String {
    let messages = value["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().rev().find(|m| m["role"] == "user").map(|m| content_text(m.get("content"))).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_json_reader_accepts_what_serde_json_accepts(bytes in json_near_misses()) {
        let expected = serde_accepts(&bytes);
        prop_assert_eq!(json::is_valid(&bytes), expected, "{}", String::from_utf8_lossy(&bytes));
        prop_assert_eq!(json::index_object(&bytes, b"messages").is_some(), expected, "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn the_json_reader_accepts_what_serde_json_accepts_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(json::is_valid(&bytes), serde_accepts(&bytes));
    }

    #[test]
    fn a_request_reads_as_a_full_parse_reads_it(value in request_like(), pretty in any::<bool>()) {
        let body = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.expect("serialise");
        // Compared with a full parse of the same text (floats do not survive a round trip).
        let full: Value = serde_json::from_str(&body).expect("JSON");
        if let Ok(request) = ChatRequest::parse(body) {
            let object = full.as_object().expect("an object");
            // Every member, in place: the same keys, each value's JSON the same value.
            let mut seen = 0;
            for member in request.members() {
                let key: String = serde_json::from_slice(&[b"\"", member.key, b"\""].concat()).expect("a key");
                let read: Value = serde_json::from_slice(member.value).expect("a value");
                prop_assert_eq!(Some(&read), object.get(&key), "{}", key);
                seen += 1;
            }
            prop_assert_eq!(seen, object.len());
            prop_assert_eq!(request.last_user_text(), last_user_text_by_full_parse(&full));
            prop_assert_eq!(request.body(), object);
            // What an OpenAI-compatible upstream gets: the same object, the model renamed, a
            // stream asking for usage.
            let sent: Value = serde_json::from_slice(&upstream_body(&request, "up")).expect("JSON");
            let mut expected = full.clone();
            expected["model"] = "up".into();
            if request.stream {
                let mut options = match &full["stream_options"] { Value::Object(o) => o.clone(), _ => Map::new() };
                options.insert("include_usage".into(), true.into());
                expected["stream_options"] = Value::Object(options);
            }
            prop_assert_eq!(sent, expected);
        }
    }
}

/// An answer-like body: an object with arbitrary fields, `usage` among them (well formed,
/// any JSON, or absent), and `usage` keys nested inside other values too.
fn answer_like() -> impl Strategy<Value = Value> {
    let usage = prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(p, c)| Some(json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p as u64 + c as u64}))),
        (any::<u32>(), any::<u32>()).prop_map(|(p, c)| Some(json!({"completion_tokens": c, "prompt_tokens": p}))),
        any_json().prop_map(Some),
        Just(None),
    ];
    (prop::collection::btree_map(field_name(), any_json(), 0..6), usage).prop_map(|(fields, usage)| {
        let mut object: Map<String, Value> = fields.into_iter().collect();
        object.remove("usage");
        if let Some(usage) = usage {
            object.insert("usage".into(), usage);
        }
        Value::Object(object)
    })
}

/// What a full parse of `body` says its top-level `usage` is.
fn usage_by_full_parse(body: &[u8]) -> Option<Usage> {
    let value: Value = serde_json::from_slice(body).ok()?;
    serde_json::from_value::<Option<Usage>>(value.get("usage")?.clone()).ok().flatten()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn usage_of_agrees_with_a_full_parse(value in answer_like(), pretty in any::<bool>()) {
        let body = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.expect("serialise");
        prop_assert_eq!(usage_of(&body), usage_by_full_parse(&body), "{}", String::from_utf8_lossy(&body));
    }

    #[test]
    fn usage_of_never_panics_and_needs_the_whole_usage(value in answer_like(), cut in any::<prop::sample::Index>()) {
        let body = serde_json::to_vec(&value).expect("serialise");
        let cut = cut.index(body.len() + 1);
        let usage = usage_of(&body[..cut]);
        // A body cut anywhere before the end of its `usage` value has none.
        if usage.is_some() {
            prop_assert_eq!(usage, usage_by_full_parse(&body));
        }
    }

    #[test]
    fn usage_of_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = usage_of(&bytes);
    }
}

/// One Anthropic event: (name, data).
fn any_event() -> impl Strategy<Value = (String, Value)> {
    (
        prop_oneof![
            prop::sample::select(vec![
                "message_start", "content_block_start", "content_block_delta", "content_block_stop",
                "message_delta", "message_stop", "ping", "error",
            ])
            .prop_map(str::to_owned),
            "[a-z_]{0,10}",
        ],
        any_json(),
    )
}

/// A well-formed Anthropic stream: text and tool-use blocks, pings, a stop reason, usage.
fn valid_events() -> impl Strategy<Value = Vec<(String, Value)>> {
    let block = prop_oneof![
        prop::collection::vec("\\PC{0,10}", 1..4).prop_map(|texts| (true, texts)),
        prop::collection::vec("[{}\":a-z0-9 ,]{0,10}", 1..4).prop_map(|parts| (false, parts)),
    ];
    (
        "[a-z0-9_]{1,12}",
        0u64..100_000,
        prop::collection::vec(block, 0..4),
        any::<bool>(),
        prop::sample::select(vec!["end_turn", "max_tokens", "tool_use", "stop_sequence"]),
        0u64..100_000,
    )
        .prop_map(|(id, input, blocks, ping, stop, output)| {
            let mut events = vec![(
                "message_start".to_owned(),
                json!({"type": "message_start", "message": {"id": id, "model": "claude-x", "usage": {"input_tokens": input, "output_tokens": 1}}}),
            )];
            if ping {
                events.push(("ping".into(), json!({"type": "ping"})));
            }
            for (index, (is_text, parts)) in blocks.into_iter().enumerate() {
                let start = if is_text {
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
                } else {
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": format!("tu_{index}"), "name": "weather", "input": {}}})
                };
                events.push(("content_block_start".into(), start));
                for part in parts {
                    let delta = if is_text {
                        json!({"type": "text_delta", "text": part})
                    } else {
                        json!({"type": "input_json_delta", "partial_json": part})
                    };
                    events.push(("content_block_delta".into(), json!({"type": "content_block_delta", "index": index, "delta": delta})));
                }
                events.push(("content_block_stop".into(), json!({"type": "content_block_stop", "index": index})));
            }
            events.push((
                "message_delta".into(),
                json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": output}}),
            ));
            events.push(("message_stop".into(), json!({"type": "message_stop"})));
            events
        })
}

fn sse_bytes(events: &[(String, Value)], crlf: bool) -> Vec<u8> {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut out = String::new();
    for (name, data) in events {
        out.push_str(&format!("event: {name}{nl}data: {data}{nl}{nl}"));
    }
    out.into_bytes()
}

/// What a decoder emitted: the bytes, each piece's usage, and whether an error ended it.
type Decoded = (Vec<u8>, Vec<Option<(u64, u64)>>, bool);

/// What the decoder emits for `chunks`.
fn decode(chunks: &[&[u8]]) -> Decoded {
    let mut decoder = StreamDecoder::new(StreamTranslator::new(true).created_at(1_700_000_000));
    let (mut bytes, mut usage, mut failed) = (Vec::new(), Vec::new(), false);
    for chunk in chunks {
        for piece in decoder.push(chunk) {
            match piece {
                Ok(piece) => {
                    bytes.extend_from_slice(&piece.bytes);
                    usage.push(piece.usage.map(|u| (u.prompt_tokens, u.completion_tokens)));
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            break;
        }
    }
    (bytes, usage, failed)
}

/// `bytes` cut at the given (sorted, deduplicated) positions.
fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        chunks.push(&bytes[last..p]);
        last = p;
    }
    chunks.push(&bytes[last..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn translator_never_panics_on_arbitrary_events(events in prop::collection::vec(any_event(), 0..24)) {
        let mut translator = StreamTranslator::new(true);
        for (name, data) in &events {
            for piece in translator.translate(name, data) {
                // Every piece is whole SSE events.
                prop_assert!(piece.bytes.ends_with(b"\n\n"));
            }
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b':')], 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let _ = decode(&split_at(&bytes, &cuts));
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_events_as_sse(
        events in prop::collection::vec(any_event(), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        crlf in any::<bool>(),
    ) {
        let bytes = sse_bytes(&events, crlf);
        let whole = decode(&[&bytes]);
        prop_assert_eq!(decode(&split_at(&bytes, &cuts)), whole);
    }

    #[test]
    fn a_valid_stream_split_anywhere_translates_like_the_whole(
        events in valid_events(),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
        crlf in any::<bool>(),
    ) {
        let bytes = sse_bytes(&events, crlf);
        let whole = decode(&[&bytes]);
        prop_assert!(!whole.2, "a valid stream decodes without error");
        let text = String::from_utf8(whole.0.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(text.ends_with("data: [DONE]\n\n"), "{}", text);
        prop_assert!(whole.1.iter().flatten().count() == 1, "exactly one usage piece");
        prop_assert_eq!(decode(&split_at(&bytes, &cuts)), whole.clone());
        // One byte at a time, the worst split of all.
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(decode(&bytewise), whole);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Token counts are whatever the upstream says, up to u64::MAX: adding them must not
    /// overflow (a panic in debug builds, a wrapped count in release).
    #[test]
    fn huge_usage_numbers_do_not_overflow(
        input in any::<u64>(), cache_read in any::<u64>(), cache_write in any::<u64>(), output in any::<u64>(),
    ) {
        let mut translator = StreamTranslator::new(true);
        let start = json!({"message": {"id": "m", "model": "c", "usage": {
            "input_tokens": input, "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": cache_write, "output_tokens": output}}});
        let _ = translator.translate("message_start", &start);
        let _ = translator.translate("message_delta", &json!({"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}}));
        let pieces = translator.translate("message_stop", &json!({}));
        let usage = pieces.iter().find_map(|p| p.usage);
        let consistent = usage.is_some_and(|u| u.total_tokens >= u.prompt_tokens && u.total_tokens >= u.completion_tokens);
        prop_assert!(consistent);
        let message = json!({"content": [], "usage": {"input_tokens": input, "cache_read_input_tokens": cache_read, "output_tokens": output}});
        let _ = gateway::providers::anthropic::to_openai_completion(&message);
    }
}
