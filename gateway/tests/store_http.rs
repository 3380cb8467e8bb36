//! The store seen over HTTP and from the CLI: virtual keys on the request path, the tenant in
//! the log row, `POST /v1/feedback`, and `switchyard migrate` / `keys`.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

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
    async fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::from_toml(&format!(
            r#"
[database]
url = "sqlite://{db}"
spill_path = "{spill}"
batch_interval_ms = 10
{extra}

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
"#,
            db = dir.path().join("log.db").display(),
            spill = dir.path().join("spill.jsonl").display(),
        ))
        .expect("config");
        let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("gateway builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Self {
            addr: app.addr(),
            state: app.state(),
            client: reqwest::Client::new(),
            _stop: stop,
            _dir: dir,
        };
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        gateway
    }

    async fn chat(&self, key: Option<&str>, stream: bool) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .json(&json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hello there"}]}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("gateway answers")
    }

    async fn feedback(&self, key: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = self.client.post(format!("http://{}/v1/feedback", self.addr)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("gateway answers")
    }
}

fn request_id(response: &reqwest::Response) -> Uuid {
    response
        .headers()
        .get("x-switchyard-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .expect("request id header")
}

#[tokio::test]
async fn feedback_is_accepted_only_from_the_tenant_that_made_the_request() {
    let gateway = Gateway::start("[auth]\nopen = false\n").await;
    let store = gateway.state.store.clone();
    let (_, acme) = create_key(&store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");
    let (_, acme_other) = create_key(&store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");
    let (_, globex) = create_key(&store, NewKey { tenant: "globex".into(), ..NewKey::default() }).await.expect("key");

    let response = gateway.chat(Some(&acme), false).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    // At once (the row may still be queued) and after the row is in the database.
    for flushed in [false, true] {
        if flushed {
            gateway.state.log.flush().await.expect("flush");
        }
        let foreign = gateway.feedback(Some(&globex), json!({"request_id": id, "score": 0.0})).await;
        assert_eq!(foreign.status(), 404, "flushed {flushed}");
        let body: Value = foreign.json().await.expect("error body");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("no request")), "{body}");
    }
    assert!(store.feedback_for(id).await.expect("read").is_empty(), "a refused rating changes nothing");
    // Any key of the same tenant may rate it.
    let ok = gateway.feedback(Some(&acme_other), json!({"request_id": id, "score": 1.0})).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(store.feedback_for(id).await.expect("read").len(), 1);
}

#[tokio::test]
async fn virtual_keys_gate_requests_and_name_the_tenant() {
    let gateway = Gateway::start("[auth]\nopen = false\nkey_cache_ttl_ms = 200\n").await;
    let store = gateway.state.store.clone();
    let (record, key) = create_key(&store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");

    assert_eq!(gateway.chat(None, false).await.status(), 401);
    assert_eq!(gateway.chat(Some("sk-sy-unknown"), false).await.status(), 401);
    let models = gateway.client.get(format!("http://{}/v1/models", gateway.addr)).send().await.expect("models");
    assert_eq!(models.status(), 401);

    let response = gateway.chat(Some(&key), false).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let streamed = gateway.chat(Some(&key), true).await;
    assert_eq!(streamed.status(), 200);
    let streamed_id = request_id(&streamed);
    streamed.text().await.expect("stream body");

    gateway.state.log.flush().await.expect("flush");
    let row = store.fetch_row(id).await.expect("fetch").expect("row written");
    assert_eq!(row.tenant.as_deref(), Some("acme"));
    assert_eq!(row.key_id, Some(record.id));
    assert_eq!((row.model.as_str(), row.provider.as_str(), row.status, row.stream), ("m", "mock", 200, false));
    assert!(row.prompt_tokens.is_some() && row.completion_tokens.is_some());
    assert_eq!(row.prompt_text, None, "prompts are not stored by default");
    let landed = wait_for(Duration::from_secs(5), async || {
        store.fetch_row(streamed_id).await.ok().flatten().is_some()
    })
    .await;
    assert!(landed);
    let row = store.fetch_row(streamed_id).await.expect("fetch").expect("row");
    assert!(row.stream && row.first_token_ms.is_some());

    // Revoked: refused once the cached lookup is older than the TTL.
    assert!(store.set_key_enabled(record.id, false).await.expect("revoke"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.chat(Some(&key), false).await.status(), 401);
}

#[tokio::test]
async fn feedback_endpoint_validates_and_records() {
    let gateway = Gateway::start("").await;
    let store = gateway.state.store.clone();
    let response = gateway.chat(None, false).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);

    // Accepted at once, whether or not the row has reached the database yet.
    let ok = gateway.feedback(None, json!({"request_id": id, "score": 0.8, "comment": "good", "source": "user"})).await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["status"], "recorded");
    let ok = gateway.feedback(None, json!({"request_id": id, "thumbs": "down"})).await;
    assert_eq!(ok.status(), 200);

    for (bad, param) in [
        (json!({"request_id": id, "score": 1.2}), "score"),
        (json!({"request_id": id, "score": -1}), "score"),
        (json!({"request_id": id, "thumbs": "meh"}), "thumbs"),
        (json!({"request_id": "not-a-uuid", "score": 0.5}), "request_id"),
        (json!({"request_id": id}), "score"),
    ] {
        let response = gateway.feedback(None, bad.clone()).await;
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], param, "{bad}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let unknown = gateway.feedback(None, json!({"request_id": Uuid::now_v7(), "score": 0.5})).await;
    assert_eq!(unknown.status(), 404);

    let feedback = store.feedback_for(id).await.expect("feedback");
    let scores: Vec<(f64, &str, Option<&str>)> =
        feedback.iter().map(|f| (f.score, f.source.as_str(), f.comment.as_deref())).collect();
    assert_eq!(scores, vec![(0.8, "user", Some("good")), (0.0, "api", None)]);
    // Feedback for a row still queued wrote it first (the batch interval had not passed).
    assert!(store.request_exists(id).await.expect("exists"));
}

#[tokio::test]
async fn prompts_are_stored_only_when_configured() {
    let gateway = Gateway::start("store_prompts = true\n").await;
    let response = gateway.chat(None, false).await;
    let id = request_id(&response);
    gateway.state.log.flush().await.expect("flush");
    let row = gateway.state.store.fetch_row(id).await.expect("fetch").expect("row");
    assert_eq!(row.prompt_text.as_deref(), Some("hello there"));
}

#[tokio::test]
async fn ready_checks_the_database() {
    let gateway = Gateway::start("").await;
    let ready = gateway.client.get(format!("http://{}/ready", gateway.addr)).send().await.expect("ready");
    assert_eq!(ready.status(), 200);
}

fn switchyard(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env_remove("SWITCHYARD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchyard");
    assert!(output.status.success(), "switchyard {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn cli_migrates_and_manages_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    assert!(switchyard(&["migrate", "--database-url", &url]).contains("up to date"));
    let created = switchyard(&["keys", "create", "--database-url", &url, "--tenant", "acme", "--name", "ci", "--rpm", "60", "--budget-usd", "5"]);
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .expect("field printed")
    };
    let key = field("key:");
    let id = field("id:");
    assert!(key.starts_with("sk-sy-"));

    let listed = switchyard(&["keys", "list", "--database-url", &url]);
    assert!(listed.contains(&id) && listed.contains("acme") && listed.contains("true"));
    assert!(!listed.contains(&key), "the key itself is never listed");

    let store = gateway::store::Store::connect(&url, 1).expect("url");
    let found = store.key_by_hash(&gateway::store::keys::hash_key(&key)).await.expect("lookup").expect("stored");
    assert_eq!((found.tenant.as_str(), found.rpm, found.budget_usd), ("acme", Some(60), Some(5.0)));

    assert!(switchyard(&["keys", "revoke", &id, "--database-url", &url]).contains("revoked"));
    let found = store.key_by_hash(&gateway::store::keys::hash_key(&key)).await.expect("lookup").expect("stored");
    assert!(!found.enabled);
    store.close().await;
}

/// Per-core serving on Postgres: key lookups made on the serving threads open pool connections
/// driven by those threads' runtimes, which the log writer may reuse; the threads keep their
/// runtimes until the log is flushed, so every request's row lands by the end of shutdown.
#[tokio::test]
async fn per_core_serving_on_postgres_keeps_every_row_through_shutdown() {
    const REQUESTS: usize = 40;
    let pg = store_support::TestPg::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::from_toml(&format!(
        r#"
[server]
runtime = "per_core"
serving_threads = 2

[auth]
open = false

[database]
url = "{url}"
spill_path = "{spill}"
batch_interval_ms = 10

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
"#,
        url = pg.url,
        spill = dir.path().join("spill.jsonl").display(),
    ))
    .expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("gateway builds");
    let (addr, state) = (app.addr(), app.state());
    let (_, key) = create_key(&state.store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let requests = (0..REQUESTS).map(|i| {
        let key = key.clone();
        async move {
            // A client per request: a connection per request, handed out over the serving threads.
            let response = reqwest::Client::new()
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "m", "stream": i % 2 == 0, "messages": [{"role": "user", "content": format!("question {i}")}]}))
                .send()
                .await
                .expect("gateway answers");
            assert_eq!(response.status(), 200);
            response.text().await.expect("body");
        }
    });
    futures_util::future::join_all(requests).await;
    stop.send(()).expect("server running");
    served.await.expect("server task").expect("clean shutdown");
    assert_eq!(pg.count_rows().await, i64::try_from(REQUESTS).expect("count"));
    let spilled = std::fs::metadata(dir.path().join("spill.jsonl")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(spilled, 0, "every row went to the database, none to the spill file");
}
