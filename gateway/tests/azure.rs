//! Azure OpenAI as an upstream, against the mock speaking Azure's wire format (deployment in
//! the path, `api-version` query, `api-key` header; it refuses a request without them): chat,
//! streamed chat and embeddings reach the model's deployment, and a missing key is the
//! upstream's 401 passed through.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod common;

use serde_json::{json, Value};

fn config(mock: std::net::SocketAddr) -> String {
    // SAFETY: set before the gateway (the only reader) starts; nextest runs each test in its
    // own process.
    unsafe { std::env::set_var("SWITCHYARD_AZURE_TEST_KEY", "azure-test-key") };
    format!(
        r#"
[database]
url = "sqlite::memory:"

[providers.azure]
kind = "azure"
base_url = "http://{mock}"
api_version = "2024-10-21"
api_key_env = "SWITCHYARD_AZURE_TEST_KEY"

[providers.azure-keyless]
kind = "azure"
base_url = "http://{mock}"
api_version = "2024-10-21"

[models.gpt-4o]
provider = "azure"
upstream_model = "prod-gpt4o"

[models.keyless]
provider = "azure-keyless"
upstream_model = "prod-gpt4o"

[models.azure-embed]
provider = "azure"
kind = "embedding"
upstream_model = "prod-embed"
"#
    )
}

#[tokio::test]
async fn chat_stream_and_embeddings_reach_the_deployment() {
    let gw = common::start(config).await;
    let hello = json!([{"role": "user", "content": "hello azure"}]);

    let response = gw.chat(json!({"model": "gpt-4o", "messages": hello})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    // The mock names the deployment it was reached at.
    assert_eq!(body["model"], "prod-gpt4o", "{body}");
    assert!(body["choices"][0]["message"]["content"].as_str().is_some_and(|t| t.contains("hello azure")), "{body}");

    let response = gw.chat(json!({"model": "gpt-4o", "messages": hello, "stream": true})).await;
    assert_eq!(response.status(), 200);
    let events = common::sse_data(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert!(text.contains("hello azure"), "{text}");

    let response = gw.client.post(gw.url("/v1/embeddings")).json(&json!({"model": "azure-embed", "input": "vector me"})).send().await.expect("reachable");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["model"], "prod-embed", "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().map(Vec::len), Some(gateway::mock::MOCK_EMBEDDING_DIM));
}

#[tokio::test]
async fn a_missing_key_is_the_upstreams_401() {
    let gw = common::start(config).await;
    let response = gw.chat(json!({"model": "keyless", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("api-key")), "{body}");
}
