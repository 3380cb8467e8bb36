//! The proxy over real HTTP: chat, streaming, Anthropic translation and every error status.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod common;

use common::{sse_data, standard_config, start};
use serde_json::{json, Value};

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn chat_passes_unknown_fields_and_sets_headers() {
    let gw = start(standard_config).await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-echo", "1")
        .json(&json!({
            "model": "faulty", "messages": user("hi"),
            "seed": 7, "logit_bias": {"50256": -100}, "x_vendor_flag": {"nested": [1, 2]},
        }))
        .send()
        .await
        .expect("reachable");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-model"], "faulty");
    assert!(response.headers().contains_key("x-switchyard-request-id"));
    let body: Value = response.json().await.expect("json");
    let echo = &body["echo"];
    assert_eq!(echo["x_vendor_flag"], json!({"nested": [1, 2]}));
    assert_eq!(echo["seed"], 7);
    assert_eq!(echo["logit_bias"]["50256"], -100);
    assert_eq!(echo["model"], "faulty");
}

#[tokio::test]
async fn route_resolves_to_its_default_model() {
    let gw = start(standard_config).await;
    let response = gw.chat(json!({"model": "auto", "messages": user("hello")})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-route"], "auto");
    assert_eq!(response.headers()["x-switchyard-model"], "gpt-4o-mini");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(body["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));
}

#[tokio::test]
async fn stream_strips_usage_chunk_the_client_did_not_ask_for() {
    let gw = start(standard_config).await;
    let response = gw
        .chat(json!({"model": "gpt-4o-mini", "stream": true, "messages": user("count to three")}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    assert!(chunks.len() > 3, "streamed in pieces: {}", chunks.len());
    assert!(chunks.iter().all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())), "no usage-only chunk");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("count to three"), "{text}");
    assert_eq!(chunks.last().map(|c| c["choices"][0]["finish_reason"].clone()), Some(json!("stop")));
}

#[tokio::test]
async fn stream_keeps_usage_chunk_when_asked() {
    let gw = start(standard_config).await;
    let response = gw
        .chat(json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": user("hi")}))
        .await;
    let events = sse_data(response).await;
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().is_some_and(|t| t > 0));
}

#[tokio::test]
async fn anthropic_non_stream_is_translated() {
    let gw = start(standard_config).await;
    let response = gw
        .chat(json!({
            "model": "claude",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-3-5-haiku-latest");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("string")).expect("json args");
    assert_eq!(arguments["city"], "Paris");
    assert!(body["usage"]["prompt_tokens"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(
        body["usage"]["total_tokens"].as_u64(),
        Some(body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) + body["usage"]["completion_tokens"].as_u64().unwrap_or(0))
    );
}

#[tokio::test]
async fn anthropic_stream_becomes_openai_chunks() {
    let gw = start(standard_config).await;
    let response = gw
        .chat(json!({
            "model": "claude", "stream": true, "stream_options": {"include_usage": true},
            "messages": user("tell me the weather"),
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        }))
        .await;
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("tell me the weather"), "{text}");
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).expect("args json")["city"], "Paris");
    let finish: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, vec![&json!("tool_calls")]);
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert!(usage["prompt_tokens"].as_u64().is_some_and(|t| t > 0));
    assert!(usage["completion_tokens"].as_u64().is_some_and(|t| t > 0));
}

#[tokio::test]
async fn models_lists_models_and_routes() {
    let gw = start(standard_config).await;
    let body: Value = gw.client.get(gw.url("/v1/models")).send().await.expect("ok").json().await.expect("json");
    let ids: Vec<&str> = body["data"].as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
    for id in ["gpt-4o-mini", "claude", "auto"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let health = gw.client.get(gw.url("/health")).send().await.expect("ok");
    assert_eq!(health.status(), 200);
    let ready = gw.client.get(gw.url("/ready")).send().await.expect("ok");
    assert_eq!(ready.status(), 200);
}

async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.as_object().is_some_and(|e| e.contains_key("param") && e.contains_key("code")), "{body}");
    body
}

#[tokio::test]
async fn bad_json_and_missing_fields_are_400() {
    let gw = start(standard_config).await;
    let url = gw.url("/v1/chat/completions");
    let bad_json = gw.client.post(&url).body("{\"model\": ").send().await.expect("ok");
    expect_error(bad_json, 400).await;
    let missing = gw.chat(json!({"model": "gpt-4o-mini"})).await;
    assert_eq!(expect_error(missing, 400).await["error"]["param"], "messages");
    let wrong_type = gw.chat(json!({"model": "gpt-4o-mini", "messages": "hi"})).await;
    expect_error(wrong_type, 400).await;
}

#[tokio::test]
async fn unknown_model_and_path_are_404() {
    let gw = start(standard_config).await;
    let body = expect_error(gw.chat(json!({"model": "no-such-model", "messages": user("x")})).await, 404).await;
    assert_eq!(body["error"]["code"], "model_not_found");
    expect_error(gw.client.get(gw.url("/v1/nothing")).send().await.expect("ok"), 404).await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let gw = start(standard_config).await;
    let big = "x".repeat(100_000);
    expect_error(gw.chat(json!({"model": "gpt-4o-mini", "messages": user(&big)})).await, 413).await;
    // Chunked upload without a Content-Length is cut off at the limit too.
    let stream = futures_util::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 4096])));
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("ok");
    expect_error(response, 413).await;
}

#[tokio::test]
async fn upstream_errors_keep_status_and_message() {
    let gw = start(standard_config).await;
    let send = |fault: &'static str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .header("x-mock-fault", fault)
            .json(&json!({"model": "faulty", "messages": user("x")}))
            .send()
    };
    let body = expect_error(send("503").await.expect("ok"), 503).await;
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("injected 503"));
    let limited = send("429:7").await.expect("ok");
    assert_eq!(limited.headers()["retry-after"], "7");
    expect_error(limited, 429).await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_hung_upstream_is_504() {
    let gw = start(standard_config).await;
    expect_error(gw.chat(json!({"model": "unreachable", "messages": user("x")})).await, 502).await;
    let hung = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "hang")
        .json(&json!({"model": "faulty", "messages": user("x")}))
        .send()
        .await
        .expect("ok");
    expect_error(hung, 504).await;
}

#[tokio::test]
async fn stream_broken_mid_way_ends_with_an_error_event() {
    let gw = start(standard_config).await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "reset")
        // Paced, so the first half really leaves the mock before the connection drops.
        .header("x-mock-per-token-ms", "5")
        .json(&json!({"model": "faulty", "stream": true, "messages": user("one two three four five six")}))
        .send()
        .await
        .expect("ok");
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("json");
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(events.len() > 1, "some content came before the break");
}

/// A stream that stops sending for longer than `request_timeout_ms` is ended by the gateway
/// with an `upstream_timeout` error event (every provider's stream reads its chunks through the
/// same idle deadline); one that keeps sending inside it runs to the end.
#[tokio::test]
async fn a_stalled_stream_ends_with_a_timeout_event_and_a_steady_one_does_not() {
    let gw = start(|mock| standard_config(mock).replace("[server]\n", "[server]\nrequest_timeout_ms = 400\n")).await;
    // The mock provider forwards the `x-mock-*` pacing headers.
    for model in ["faulty"] {
        let stream = |per_token_ms: &'static str| {
            gw.client
                .post(gw.url("/v1/chat/completions"))
                .header("x-mock-per-token-ms", per_token_ms)
                .json(&json!({"model": model, "stream": true, "messages": user("one two three four five six")}))
                .send()
        };
        let started = std::time::Instant::now();
        let stalled = stream("1500").await.expect("ok");
        assert_eq!(stalled.status(), 200);
        let events = sse_data(stalled).await;
        let last: Value = serde_json::from_str(events.last().expect("events")).expect("json");
        assert_eq!(last["error"]["code"], "upstream_timeout", "{model}: {last}");
        assert!(started.elapsed() < std::time::Duration::from_millis(1_400), "{model}: cut at the idle limit, {:?}", started.elapsed());
        // 12 chunks 100 ms apart: 1.2 s in all, but never 400 ms without one.
        let steady = sse_data(stream("100").await.expect("ok")).await;
        assert_eq!(steady.last().map(String::as_str), Some("[DONE]"), "{model}: {steady:?}");
    }
}

#[tokio::test]
async fn master_key_is_required_when_configured() {
    std::env::set_var("SWITCHYARD_TEST_MASTER_KEY", "sk-test-master");
    let gw = start(|mock| {
        standard_config(mock).replace("[server]\n", "[server]\nmaster_key_env = \"SWITCHYARD_TEST_MASTER_KEY\"\n")
    })
    .await;
    let body = json!({"model": "gpt-4o-mini", "messages": user("x")});
    let none = gw.client.post(gw.url("/v1/chat/completions")).json(&body).send().await.expect("ok");
    expect_error(none, 401).await;
    let wrong = gw.client.post(gw.url("/v1/chat/completions")).bearer_auth("sk-wrong").json(&body).send().await.expect("ok");
    expect_error(wrong, 401).await;
    let right = gw.client.post(gw.url("/v1/chat/completions")).bearer_auth("sk-test-master").json(&body).send().await.expect("ok");
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_by_model_and_status() {
    let gw = start(standard_config).await;
    let count_of = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("switchyard_request_duration_seconds_count") && l.contains("model=\"gpt-4o-mini\"") && l.contains("status=\"200\""))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let metrics = || async { gw.client.get(gw.url("/metrics")).send().await.expect("ok").text().await.expect("text") };
    let before = count_of(&metrics().await);
    // The first request of a label set looks its series up; the next ones reuse them.
    for _ in 0..3 {
        assert_eq!(gw.chat(json!({"model": "gpt-4o-mini", "messages": user("x")})).await.status(), 200);
    }
    let text = metrics().await;
    assert!(count_of(&text) - before >= 3.0, "{before} before, then\n{text}");
    assert!(text.contains("switchyard_tokens_total"), "{text}");
    assert!(text.contains("switchyard_log_rows"), "{text}");
}

#[tokio::test]
async fn answers_echo_the_clients_request_id_or_carry_their_own() {
    let gw = start(standard_config).await;
    let send = |model: &'static str, id: Option<&'static str>| {
        let mut request = gw.client.post(gw.url("/v1/chat/completions")).json(&json!({"model": model, "messages": user("hi")}));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let ok = send("faulty", Some("client-trace-42")).await.expect("reachable");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-request-id"], "client-trace-42");
    // The gateway's own id stays the log's key, distinct from the client's.
    let own = ok.headers()["x-switchyard-request-id"].to_str().unwrap().to_owned();
    assert_ne!(own, "client-trace-42");

    // Errors echo it too, and a request without one gets the gateway's id.
    let refused = send("no-such-model", Some("client-trace-43")).await.expect("reachable");
    assert_eq!(refused.status(), 404);
    assert_eq!(refused.headers()["x-request-id"], "client-trace-43");
    let anonymous = send("faulty", None).await.expect("reachable");
    assert_eq!(anonymous.headers()["x-request-id"], anonymous.headers()["x-switchyard-request-id"]);
    // An id with spaces or control characters is not echoed.
    let odd = send("faulty", Some("two words")).await.expect("reachable");
    assert_eq!(odd.headers()["x-request-id"], odd.headers()["x-switchyard-request-id"]);
    gw.stop().await;
}
