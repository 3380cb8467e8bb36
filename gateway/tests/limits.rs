//! Per-key and per-tenant limits against the real Redis at 127.0.0.1:6379
//! (`SWITCHYARD_TEST_REDIS` overrides the URL). Every test uses its own key prefix and
//! deletes its keys at the end.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod redis_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway::app::AppState;
use gateway::store::keys::{create_key, NewKey};
use gateway::{Application, Config};
use serde_json::{json, Value};
use tempfile::TempDir;
use redis_support::{redis_url, Prefix};
use tokio::sync::oneshot;

struct Gateway {
    addr: SocketAddr,
    state: Arc<AppState>,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// A gateway over the SQLite file in `dir` (so two gateways can share keys) with `limits`
/// as its `[limits]` section.
async fn start(dir: &Path, limits: &str) -> Gateway {
    let config = Config::from_toml(&format!(
        r#"
[database]
url = "sqlite://{db}"
spill_path = "{spill}"
batch_interval_ms = 10

[limits]
{limits}

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0
"#,
        db = dir.join("log.db").display(),
        spill = dir.join(format!("spill-{}.jsonl", uuid::Uuid::now_v7().simple())).display(),
    ))
    .expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("gateway builds");
    let (stop, stopped) = oneshot::channel::<()>();
    let gateway = Gateway { addr: app.addr(), state: app.state(), client: reqwest::Client::new(), _stop: stop };
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    gateway
}

impl Gateway {
    async fn chat(&self, key: &str, stream: bool) -> reqwest::Response {
        self.client
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .bearer_auth(key)
            .json(&json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .expect("gateway reachable")
    }

    async fn key(&self, tenant: &str, rpm: Option<i64>, tpm: Option<i64>, budget_usd: Option<f64>) -> String {
        let new = NewKey { tenant: tenant.into(), rpm, tpm, budget_usd, ..NewKey::default() };
        create_key(&self.state.store, new).await.expect("create key").1
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addr);
        self.client.get(url).send().await.expect("metrics").text().await.expect("metrics body")
    }
}

/// Waits (at most ~12 s) until at least 12 s are left in the current UTC minute, so a test's
/// requests fall in one rpm/tpm window.
async fn fresh_minute() {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let into = secs % 60.0;
    if into > 48.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.0 - into + 0.05)).await;
    }
}

/// Asserts a 429 with the OpenAI error body and a Retry-After in seconds; returns it.
async fn assert_limited(response: reqwest::Response, code: &str, max_retry: u64) -> u64 {
    assert_eq!(response.status(), 429);
    let retry: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=max_retry).contains(&retry), "Retry-After {retry}");
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    retry
}

/// Polls until the charge (a spawned Redis call) has landed: the key's tpm/budget counter
/// is non-zero. Bounded at 2 s.
async fn wait_charged(prefix: &Prefix, kind: &str) {
    for _ in 0..100 {
        if prefix.keys().await.iter().any(|k| k.contains(&format!(":{kind}:"))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {kind} counter was charged");
}

#[tokio::test]
async fn rpm_limit_answers_429_with_retry_after_and_openai_body() {
    let dir = TempDir::new().expect("temp dir");
    let prefix = Prefix::new();
    let gateway = start(dir.path(), &format!("redis_url = \"{}\"\nkey_prefix = \"{}\"", redis_url(), prefix.0)).await;
    let key = gateway.key("acme", Some(3), None, None).await;
    fresh_minute().await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(gateway.chat(&key, false).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200]);
    assert_limited(gateway.chat(&key, false).await, "rate_limit_exceeded", 60).await;
    // Refused requests do not count: still refused, still 429, not 500.
    assert_limited(gateway.chat(&key, true).await, "rate_limit_exceeded", 60).await;
    // Another key of the same tenant has its own counter.
    let other = gateway.key("acme", Some(3), None, None).await;
    assert_eq!(gateway.chat(&other, false).await.status(), 200);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_limit_rejections_total{kind=\"rpm\",scope=\"key\"}")),
        "{metrics}"
    );
    assert!(!prefix.keys().await.is_empty(), "counters live in Redis under the test prefix");
    // Each refusal leaves a row in the outcome log, under the caller's tenant.
    let rows = refused_rows(dir.path(), 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (status, class, provider, tenant, model) in rows {
        assert_eq!((status, class.as_str(), provider.as_str()), (429, "rate_limit_exceeded", "gateway"));
        assert_eq!((tenant.as_deref(), model.as_str()), (Some("acme"), "m"));
    }
}

/// Refused rows (status ≥ 400) in the gateway's SQLite log, once at least `want` are written
/// (bounded at 5 s).
async fn refused_rows(dir: &Path, want: usize) -> Vec<(i64, String, String, Option<String>, String)> {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open log");
    let mut rows = Vec::new();
    for _ in 0..250 {
        rows = sqlx::query_as(
            "SELECT status, error_class, provider, tenant, model FROM request_log WHERE status >= 400 ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("query log");
        if rows.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rows
}

#[tokio::test]
async fn token_limit_blocks_the_next_request_after_a_stream() {
    let dir = TempDir::new().expect("temp dir");
    let prefix = Prefix::new();
    let gateway = start(dir.path(), &format!("redis_url = \"{}\"\nkey_prefix = \"{}\"", redis_url(), prefix.0)).await;
    // One answer uses more than 10 tokens (prompt + completion), so it crosses the limit.
    let key = gateway.key("acme", None, Some(10), None).await;
    fresh_minute().await;
    let response = gateway.chat(&key, true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("stream");
    assert!(body.contains("[DONE]"), "{body}");
    wait_charged(&prefix, "tpm").await;
    assert_limited(gateway.chat(&key, false).await, "rate_limit_exceeded", 60).await;
}

#[tokio::test]
async fn usd_budget_blocks_once_spent() {
    let dir = TempDir::new().expect("temp dir");
    let prefix = Prefix::new();
    let limits = format!("redis_url = \"{}\"\nkey_prefix = \"{}\"\nbudget_period = \"month\"", redis_url(), prefix.0);
    let gateway = start(dir.path(), &limits).await;
    // Two answers at 10/30 USD per Mtok cost ~0.0004 USD each: under 0.0005 after one,
    // over it after two.
    let key = gateway.key("acme", None, None, Some(0.0005)).await;
    assert_eq!(gateway.chat(&key, false).await.status(), 200);
    wait_charged(&prefix, "usd").await;
    assert_eq!(gateway.chat(&key, false).await.status(), 200);
    let mut refused = None;
    for _ in 0..100 {
        let response = gateway.chat(&key, false).await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = assert_limited(refused.expect("budget refuses once spent"), "budget_exceeded", 31 * 86_400).await;
    assert!(retry > 60, "a monthly budget resets at the end of the month, not in a minute: {retry}");
}

#[tokio::test]
async fn tenant_rpm_from_config_covers_all_its_keys() {
    let dir = TempDir::new().expect("temp dir");
    let prefix = Prefix::new();
    let limits = format!(
        "redis_url = \"{}\"\nkey_prefix = \"{}\"\n[limits.tenants.acme]\nrpm = 2\n",
        redis_url(),
        prefix.0
    );
    let gateway = start(dir.path(), &limits).await;
    let a = gateway.key("acme", None, None, None).await;
    let b = gateway.key("acme", None, None, None).await;
    let other = gateway.key("globex", None, None, None).await;
    fresh_minute().await;
    assert_eq!(gateway.chat(&a, false).await.status(), 200);
    assert_eq!(gateway.chat(&b, false).await.status(), 200);
    assert_limited(gateway.chat(&a, false).await, "rate_limit_exceeded", 60).await;
    assert_limited(gateway.chat(&b, false).await, "rate_limit_exceeded", 60).await;
    assert_eq!(gateway.chat(&other, false).await.status(), 200, "another tenant is not limited");
}

#[tokio::test]
async fn the_limit_holds_across_two_gateways_sharing_redis() {
    let dir = TempDir::new().expect("temp dir");
    let prefix = Prefix::new();
    let limits = format!("redis_url = \"{}\"\nkey_prefix = \"{}\"", redis_url(), prefix.0);
    let a = start(dir.path(), &limits).await;
    let b = start(dir.path(), &limits).await;
    let key = a.key("acme", Some(5), None, None).await;
    fresh_minute().await;
    // 16 requests, 8 on each gateway, concurrently.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let (client, addr, key) = (gateway.client.clone(), gateway.addr, key.clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .expect("gateway reachable");
            (i % 2, response.status().as_u16())
        }));
    }
    let mut ok = [0; 2];
    let mut limited = 0;
    for task in tasks {
        match task.await.expect("task") {
            (side, 200) => ok[side] += 1,
            (_, 429) => limited += 1,
            (_, status) => panic!("unexpected status {status}"),
        }
    }
    assert_eq!(ok[0] + ok[1], 5, "exactly the limit succeeds across both gateways: {ok:?}");
    assert_eq!(limited, 11);
    // Both gateways served and refused: the key was found in the shared SQLite by each.
    assert_eq!(a.chat(&key, false).await.status(), 429);
    assert_eq!(b.chat(&key, false).await.status(), 429);
}

#[tokio::test]
async fn unreachable_redis_fails_open_by_default_and_closed_when_configured() {
    let dir = TempDir::new().expect("temp dir");
    // Port 9 (discard) is closed on loopback: connections are refused at once.
    let open = start(dir.path(), "redis_url = \"redis://127.0.0.1:9\"\nredis_timeout_ms = 100").await;
    let key = open.key("acme", Some(1), None, None).await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(open.chat(&key, false).await.status(), 200, "fail-open serves without limits");
        assert!(started.elapsed() < Duration::from_secs(2), "the limiter never hangs a request");
    }
    let metrics = open.metrics().await;
    assert!(metrics.contains("switchyard_limit_backend_errors_total{op=\"admit\"}"), "{metrics}");

    let closed = start(dir.path(), "redis_url = \"redis://127.0.0.1:9\"\nredis_timeout_ms = 100\non_backend_error = \"closed\"").await;
    let response = closed.chat(&key, false).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "limiter_unavailable", "{body}");
}
