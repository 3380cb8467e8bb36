//! The translated APIs (`/v1/responses`, `/v1/messages`) run through the chat pipeline, so
//! what chat guarantees holds for them too: every answer and every refusal leaves an outcome
//! row, a repeat is served by the exact cache, and a key's limits refuse in the API's own
//! error shape. Over real HTTP, with the outcome log in SQLite and the in-process limiter.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway::app::AppState;
use gateway::store::keys::{create_key, NewKey};
use gateway::store::LogStore;
use gateway::{Application, Config};
use serde_json::{json, Value};
use store_support::wait_for;
use tempfile::TempDir;
use tokio::sync::oneshot;
use uuid::Uuid;

struct Gateway {
    addr: SocketAddr,
    state: Arc<AppState>,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let config = Config::from_toml(&format!(
            r#"
[database]
url = "sqlite://{db}"
batch_interval_ms = 10

[cache]
exact = true

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0
"#,
            db = dir.path().join("log.db").display(),
        ))
        .expect("config");
        let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("gateway builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Self { addr: app.addr(), state: app.state(), client: reqwest::Client::new(), _stop: stop, _dir: dir };
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        gateway
    }

    async fn key(&self, rpm: Option<i64>) -> String {
        create_key(&self.state.store, NewKey { tenant: "acme".into(), rpm, ..NewKey::default() }).await.expect("create key").1
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .client
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(key)
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .expect("reachable");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.expect("JSON body"))
    }

    async fn row(&self, headers: &reqwest::header::HeaderMap) -> gateway::store::LogRow {
        let id: Uuid = headers["x-switchyard-request-id"].to_str().unwrap().parse().expect("request id");
        let store = self.state.store.clone();
        assert!(wait_for(Duration::from_secs(5), async || store.fetch_row(id).await.ok().flatten().is_some()).await, "row {id} written");
        store.fetch_row(id).await.expect("fetch").expect("row")
    }

    async fn rows_with_status(&self, status: i32) -> i64 {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", self._dir.path().join("log.db").display())).await.expect("log db");
        let n = sqlx::query_scalar("SELECT count(*) FROM request_log WHERE status = ?").bind(status).fetch_one(&pool).await.expect("count");
        pool.close().await;
        n
    }
}

/// Waits (at most ~12 s) until at least 12 s are left in the current UTC minute, so a test's
/// requests fall in one rpm window.
async fn fresh_minute() {
    let into = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64() % 60.0;
    if into > 48.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.0 - into + 0.05)).await;
    }
}

#[tokio::test]
async fn responses_are_logged_and_a_repeat_comes_from_the_cache() {
    let gw = Gateway::start().await;
    let key = gw.key(None).await;
    let request = json!({"model": "m", "input": "What is the capital of France?", "instructions": "Answer in one word."});
    let (status, headers, body) = gw.post("/v1/responses", &key, request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "response");
    let row = gw.row(&headers).await;
    assert_eq!((row.model.as_str(), row.status, row.tenant.as_deref()), ("m", 200, Some("acme")));
    assert!(row.cost_usd.is_some_and(|c| c > 0.0), "costed: {row:?}");
    assert!(row.completion_tokens.is_some_and(|t| t > 0), "{row:?}");

    let (status, headers, again) = gw.post("/v1/responses", &key, request).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-cache"], "exact");
    assert_eq!(again["output"][0]["content"], body["output"][0]["content"], "the cached answer is the same answer");
    assert_eq!(gw.row(&headers).await.cache_result.as_deref(), Some("exact"));
}

#[tokio::test]
async fn messages_are_logged_and_limited_in_anthropics_shape() {
    let gw = Gateway::start().await;
    let key = gw.key(Some(2)).await;
    fresh_minute().await;
    let request = |text: &str| json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": text}]});
    for text in ["first question", "second question"] {
        let (status, headers, body) = gw.post("/v1/messages", &key, request(text)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["type"], "message");
        let row = gw.row(&headers).await;
        assert_eq!((row.model.as_str(), row.status), ("m", 200));
    }
    let (status, headers, body) = gw.post("/v1/messages", &key, request("third question")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(wait_for(Duration::from_secs(5), async || gw.rows_with_status(429).await == 1).await, "the refusal is logged");
}
