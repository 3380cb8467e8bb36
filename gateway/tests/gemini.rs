//! Google Gemini as an upstream, against the mock speaking Gemini's native wire format
//! (`models/{model}:generateContent`, `:streamGenerateContent?alt=sse` with CRLF-separated
//! events, `x-goog-api-key`): JSON and streamed chat, JSON mode, usage and cost, and the
//! upstream's errors.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod common;

use serde_json::{json, Value};

fn config(mock: std::net::SocketAddr) -> String {
    // SAFETY: set before the gateway (the only reader) starts; nextest runs each test in its
    // own process.
    unsafe { std::env::set_var("SWITCHYARD_GEMINI_TEST_KEY", "gemini-test-key") };
    format!(
        r#"
[database]
url = "sqlite::memory:"

[providers.google]
kind = "gemini"
base_url = "http://{mock}/v1beta"
api_key_env = "SWITCHYARD_GEMINI_TEST_KEY"

[providers.google-keyless]
kind = "gemini"
base_url = "http://{mock}/v1beta"

[models.flash]
provider = "google"
upstream_model = "gemini-2.0-flash"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.4

[models.keyless]
provider = "google-keyless"
upstream_model = "gemini-2.0-flash"
"#
    )
}

#[tokio::test]
async fn chat_json_mode_and_streams_translate_both_ways() {
    let gw = common::start(config).await;
    let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello gemini"}]);

    let response = gw.chat(json!({"model": "flash", "messages": messages})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemini-2.0-flash");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let text = body["choices"][0]["message"]["content"].as_str().expect("text").to_owned();
    assert!(text.contains("hello gemini"), "{body}");
    let plain_usage = body["usage"].clone();
    assert!(body["usage"]["prompt_tokens"].as_u64() > Some(0) && body["usage"]["completion_tokens"].as_u64() > Some(0), "{body}");

    let response = gw.chat(json!({"model": "flash", "messages": messages, "response_format": {"type": "json_object"}})).await;
    let json_mode: Value = response.json().await.expect("json");
    let content = json_mode["choices"][0]["message"]["content"].as_str().expect("text");
    assert!(serde_json::from_str::<Value>(content).is_ok_and(|v| v.is_object()), "JSON mode reached Gemini: {content}");

    let response = gw
        .chat(json!({"model": "flash", "messages": messages, "stream": true, "stream_options": {"include_usage": true}}))
        .await;
    assert_eq!(response.status(), 200);
    let events = common::sse_data(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text, "the stream carries the same answer");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks.iter().find(|c| c["usage"].is_object()).expect("usage chunk the client asked for");
    assert_eq!(usage["usage"]["completion_tokens"], plain_usage["completion_tokens"]);
}

#[tokio::test]
async fn upstream_errors_and_refusals_keep_their_status() {
    let gw = common::start(config).await;
    let hi = json!([{"role": "user", "content": "hi"}]);
    let response = gw.chat(json!({"model": "keyless", "messages": hi})).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("API key")), "{body}");

    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let response = gw.chat(json!({"model": "flash", "messages": hi, "tools": tools})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["param"], "tools", "{body}");
}
