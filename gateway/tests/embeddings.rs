//! `POST /v1/embeddings` over HTTP: the local model (the real MiniLM weights, compared with
//! the embedder called directly), an upstream embedding model on the mock, base64 encoding,
//! the outcome rows and their cost, and bad input.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use gateway::app::AppState;
use gateway::store::LogStore;
use gateway::mock::mock_embedding;
use gateway::{Application, Config};
use router_model::{BertEmbedder, Embedder, EmbedderOptions, ModelSource};
use serde_json::{json, Value};
use store_support::wait_for;
use tempfile::TempDir;
use tokio::sync::oneshot;
use uuid::Uuid;

fn embedder_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/all-MiniLM-L6-v2")
}

struct Gateway {
    addr: SocketAddr,
    state: Arc<AppState>,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::from_toml(&format!(
            r#"
[database]
url = "sqlite://{db}"
batch_interval_ms = 10

[router]
embedder_dir = "{embedder}"

[providers.mock]
kind = "mock"

[models.chat]
provider = "mock"

[models.minilm]
provider = "local"
kind = "embedding"

[models.text-embedding-3-small]
provider = "mock"
kind = "embedding"
upstream_model = "te3-small-upstream"
input_usd_per_mtok = 20.0
"#,
            db = dir.path().join("log.db").display(),
            embedder = embedder_dir().display(),
        ))
        .expect("config");
        let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("gateway builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Self { addr: app.addr(), state: app.state(), client: reqwest::Client::new(), _stop: stop, _dir: dir };
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        gateway
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value, Option<Uuid>) {
        let response = self.client.post(format!("http://{}{path}", self.addr)).json(&body).send().await.expect("reachable");
        let status = response.status().as_u16();
        let id = response
            .headers()
            .get("x-switchyard-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        (status, response.json().await.expect("JSON body"), id)
    }

    async fn row(&self, id: Uuid) -> gateway::store::LogRow {
        let store = self.state.store.clone();
        assert!(wait_for(Duration::from_secs(5), async || store.fetch_row(id).await.ok().flatten().is_some()).await, "row {id} written");
        store.fetch_row(id).await.expect("fetch").expect("row")
    }
}

fn vectors(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i, "{item}");
            assert_eq!(item["object"], "embedding");
            match &item["embedding"] {
                Value::String(encoded) => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .expect("base64")
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                floats => floats.as_array().expect("floats").iter().map(|x| x.as_f64().expect("number") as f32).collect(),
            }
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const TEXTS: [&str; 3] = [
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "What is the boiling point of water at sea level?",
];

#[tokio::test]
async fn the_local_model_answers_with_the_embedders_own_vectors_and_logs_the_tokens() {
    let gw = Gateway::start().await;
    let (status, body, id) = gw.post("/v1/embeddings", json!({"model": "minilm", "input": TEXTS})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    let served = vectors(&body);

    // The same vectors as the embedder called directly on the same weights.
    let embedder = BertEmbedder::load(&ModelSource::Dir(embedder_dir()), &EmbedderOptions::default()).expect("weights");
    let direct = embedder.embed_batch(&TEXTS).expect("embed");
    assert_eq!(served.len(), 3);
    for (got, want) in served.iter().zip(&direct) {
        assert_eq!(got.len(), 384);
        let drift = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(drift < 1e-4, "served vector differs from the embedder's by {drift}");
    }
    // Paraphrases are closer than unrelated questions.
    assert!(cosine(&served[0], &served[1]) > cosine(&served[0], &served[2]) + 0.2);
    let tokens: usize = TEXTS.iter().map(|t| embedder.tokenize(t).expect("tokens").len()).sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    assert_eq!(body["usage"]["total_tokens"], tokens);

    let row = gw.row(id.expect("request id header")).await;
    assert_eq!((row.model.as_str(), row.provider.as_str(), row.status), ("minilm", "local", 200));
    assert_eq!(row.prompt_tokens, Some(tokens as i64));
    assert_eq!(row.completion_tokens, Some(0));
    assert_eq!(row.cost_usd, Some(0.0));
    assert_eq!(row.route, None);

    // base64 (what openai-python asks for by default) carries the same floats.
    let (status, encoded, _) = gw.post("/v1/embeddings", json!({"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"})).await;
    assert_eq!(status, 200, "{encoded}");
    assert!(encoded["data"][0]["embedding"].is_string());
    assert_eq!(vectors(&encoded)[0], served[0]);

    // More inputs than the embedder's queue holds (256): served, not refused as overloaded.
    let many: Vec<String> = (0..300).map(|i| format!("short text number {i}")).collect();
    let (status, body, _) = gw.post("/v1/embeddings", json!({"model": "minilm", "input": many})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vectors(&body).len(), 300);
}

#[tokio::test]
async fn an_upstream_embedding_model_is_proxied_and_costed() {
    let gw = Gateway::start().await;
    let (status, body, id) = gw
        .post("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"], "encoding_format": "base64"}))
        .await;
    assert_eq!(status, 200, "{body}");
    // The upstream saw its own model name, and its vectors come back as it sent them.
    assert_eq!(body["model"], "te3-small-upstream");
    assert_eq!(vectors(&body), vec![mock_embedding("alpha"), mock_embedding("beta")]);
    let tokens = body["usage"]["prompt_tokens"].as_i64().expect("usage");
    assert!(tokens > 0);
    let row = gw.row(id.expect("id")).await;
    assert_eq!((row.model.as_str(), row.provider.as_str(), row.status), ("text-embedding-3-small", "mock", 200));
    assert_eq!(row.prompt_tokens, Some(tokens));
    let cost = row.cost_usd.expect("cost");
    assert!((cost - tokens as f64 * 20.0 / 1e6).abs() < 1e-12, "{cost}");

    // Token ids go upstream as they are.
    let (status, body, _) = gw.post("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));

    // An upstream failure keeps its status and leaves a row.
    let response = gw
        .client
        .post(format!("http://{}/v1/embeddings", gw.addr))
        .header("x-mock-fault", "503")
        .json(&json!({"model": "text-embedding-3-small", "input": "x"}))
        .send()
        .await
        .expect("reachable");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("503")), "{body}");
    let log = sqlx::SqlitePool::connect(&format!("sqlite://{}", gw._dir.path().join("log.db").display())).await.expect("log db");
    let failed = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM request_log WHERE model = 'text-embedding-3-small' AND status = 503")
            .fetch_one(&log)
            .await
            .unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(5), async || failed().await == 1).await, "the failed call is logged");
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_parameter() {
    let gw = Gateway::start().await;
    let cases = [
        (json!({"model": "chat", "input": "x"}), 400, Some("model")),
        (json!({"model": "nope", "input": "x"}), 404, Some("model")),
        (json!({"model": "minilm"}), 400, Some("input")),
        (json!({"model": "minilm", "input": [1, 2]}), 400, Some("input")),
        (json!({"model": "minilm", "input": "x", "dimensions": 64}), 400, Some("dimensions")),
        (json!({"model": "minilm", "input": "x", "encoding_format": "int8"}), 400, Some("encoding_format")),
    ];
    for (body, status, param) in cases {
        let (got, answer, _) = gw.post("/v1/embeddings", body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        let error = &answer["error"];
        assert!(error["message"].is_string() && error["type"].is_string(), "{answer}");
        assert_eq!(error["param"].as_str(), param, "{body} -> {answer}");
    }
    // An embedding model is not a chat model.
    let (status, answer, _) = gw.post("/v1/chat/completions", json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "model");
}
