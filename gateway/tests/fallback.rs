//! Upstream failures with two candidates: the client should not notice.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::start;
use serde_json::{json, Value};

fn config(mock: SocketAddr) -> String {
    format!(
        r#"
[server]
first_byte_timeout_ms = 400
breaker_failures = 3
breaker_open_ms = 60000

[database]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
base_url = "http://{mock}/v1"

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.primary]
provider = "mock"

[models.secondary]
provider = "mock"

[models.dead]
provider = "down"

[routes.pair]
candidates = ["primary", "secondary"]
default = "primary"

[routes.dead-first]
candidates = ["dead", "secondary"]
default = "dead"
"#
    )
}

async fn ask(gw: &common::TestGateway, route: &str, fault: Option<&str>, stream: bool) -> (u16, String, String) {
    let mut request = gw.client.post(gw.url("/v1/chat/completions")).json(&json!({
        "model": route, "stream": stream, "messages": [{"role": "user", "content": "hello"}],
    }));
    if let Some(fault) = fault {
        request = request.header("x-mock-fault", fault);
    }
    let response = request.send().await.expect("reachable");
    let status = response.status().as_u16();
    let model = response
        .headers()
        .get("x-switchyard-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, model, response.text().await.expect("body"))
}

#[tokio::test]
async fn server_errors_fall_back_and_open_the_breaker() {
    let gw = start(config).await;
    for _ in 0..8 {
        let (status, model, body) = ask(&gw, "pair", Some("primary=500"), false).await;
        assert_eq!((status, model.as_str()), (200, "secondary"), "{body}");
    }
    // The breaker is open now: even a healthy primary is skipped until its probe time.
    let (status, model, _) = ask(&gw, "pair", None, false).await;
    assert_eq!((status, model.as_str()), (200, "secondary"));
    // A request naming the broken model directly gets a fast 503, not a timeout.
    let (status, _, body) = ask(&gw, "primary", None, false).await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "circuit_open");
}

#[tokio::test]
async fn rate_limit_falls_back_without_opening_the_breaker() {
    let gw = start(config).await;
    for _ in 0..5 {
        let (status, model, _) = ask(&gw, "pair", Some("primary=429:1"), false).await;
        assert_eq!((status, model.as_str()), (200, "secondary"));
    }
    // Cooldown is Retry-After long; afterwards the primary serves again (breaker closed).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, model, _) = ask(&gw, "pair", None, false).await;
    assert_eq!((status, model.as_str()), (200, "primary"));
}

#[tokio::test]
async fn hung_upstream_hits_the_first_byte_timeout_then_falls_back() {
    let gw = start(config).await;
    let started = Instant::now();
    let (status, model, _) = ask(&gw, "pair", Some("primary=hang"), true).await;
    assert_eq!((status, model.as_str()), (200, "secondary"));
    assert!(started.elapsed() >= Duration::from_millis(400), "waited for the timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_upstream_falls_back_for_streams_too() {
    let gw = start(config).await;
    let (status, model, body) = ask(&gw, "dead-first", None, true).await;
    assert_eq!((status, model.as_str()), (200, "secondary"));
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[tokio::test]
async fn client_errors_do_not_fall_back() {
    let gw = start(config).await;
    let (status, _, _) = ask(&gw, "pair", Some("primary=400"), false).await;
    assert_eq!(status, 400, "a request the upstream rejects is the client's to fix");
}

fn timeout_config(mock: SocketAddr) -> String {
    format!(
        r#"
[server]
first_byte_timeout_ms = 5000

[database]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
base_url = "http://{mock}/v1"

[models.primary]
provider = "mock"

[models.secondary]
provider = "mock"

[routes.quick]
candidates = ["primary", "secondary"]
default = "primary"
first_byte_timeout_ms = 500
"#
    )
}

async fn ask_with_timeout(gw: &common::TestGateway, timeout: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "primary=hang")
        .header("x-switchyard-timeout-ms", timeout)
        .json(&json!({"model": "quick", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("reachable");
    let status = response.status().as_u16();
    let model = response
        .headers()
        .get("x-switchyard-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = response.text().await;
    (status, model, started.elapsed())
}

#[tokio::test]
async fn timeout_header_shortens_the_first_byte_wait() {
    let gw = start(timeout_config).await;
    let (status, model, took) = ask_with_timeout(&gw, "200").await;
    assert_eq!((status, model.as_str()), (200, "secondary"));
    assert!(took >= Duration::from_millis(200), "waited for the asked timeout: {took:?}");
    assert!(took < Duration::from_millis(450), "did not wait for the route's 500 ms: {took:?}");
}

#[tokio::test]
async fn timeout_header_cannot_exceed_the_route_timeout() {
    let gw = start(timeout_config).await;
    // The route says 500 ms (the server 5 s); asking for a minute is clamped to the route's.
    let (status, model, took) = ask_with_timeout(&gw, "60000").await;
    assert_eq!((status, model.as_str()), (200, "secondary"));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(3_000), "clamped to the route's 500 ms, not 60 s or 5 s: {took:?}");
}

#[tokio::test]
async fn bad_timeout_header_is_a_400_naming_it() {
    let gw = start(timeout_config).await;
    for bad in ["soon", "0", "-5"] {
        let (status, _, _) = ask_with_timeout(&gw, bad).await;
        assert_eq!(status, 400, "{bad}");
    }
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-switchyard-timeout-ms", "soon")
        .json(&json!({"model": "quick", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("reachable");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "x-switchyard-timeout-ms");
}

fn bulkhead_config(_mock: SocketAddr) -> String {
    r#"
[database]
url = "sqlite::memory:"

[providers.small]
kind = "mock"
max_concurrent = 2

[providers.big]
kind = "mock"

[models.first]
provider = "small"

[models.second]
provider = "big"

[routes.bulk]
candidates = ["first", "second"]
default = "first"
exploration = 0

[routes.only-small]
candidates = ["first"]
default = "first"
exploration = 0
"#
    .to_owned()
}

async fn slow_stream(gw: &common::TestGateway, route: &str) -> (u16, String, String) {
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-per-token-ms", "40")
        .json(&json!({"model": route, "stream": true, "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .expect("reachable");
    let status = response.status().as_u16();
    let model = response
        .headers()
        .get("x-switchyard-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, model, response.text().await.expect("body"))
}

#[tokio::test]
async fn full_bulkhead_skips_to_the_next_candidate() {
    let gw = std::sync::Arc::new(start(bulkhead_config).await);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { slow_stream(&gw, "bulk").await })
        })
        .collect();
    let mut on_first = 0;
    for client in clients {
        let (status, model, body) = client.await.expect("join");
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        on_first += usize::from(model == "first");
    }
    assert!(on_first <= 2, "{on_first} requests on a provider capped at 2");
    assert!(on_first >= 1, "the first model served some");
}

#[tokio::test]
async fn full_bulkhead_with_no_candidate_left_is_a_503() {
    let gw = std::sync::Arc::new(start(bulkhead_config).await);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { slow_stream(&gw, "only-small").await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut unavailable_bodies = Vec::new();
    for client in clients {
        let (status, _, body) = client.await.expect("join");
        if status == 503 {
            unavailable_bodies.push(body);
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 503]);
    let body: Value = serde_json::from_str(&unavailable_bodies[0]).expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("max_concurrent")), "{body}");
}

fn retry_config(mock: SocketAddr) -> String {
    format!(
        r#"
[server]
first_byte_timeout_ms = 400

[database]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
base_url = "http://{mock}/v1"

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.flaky]
provider = "mock"
retries = 2
retry_backoff_ms = 20
retry_max_backoff_ms = 1500

[models.impatient]
provider = "mock"
retries = 2
retry_backoff_ms = 20
retry_max_backoff_ms = 500

[models.secondary]
provider = "mock"

[models.dead]
provider = "down"
fallbacks = ["secondary"]
"#
    )
}

#[tokio::test]
async fn a_named_model_is_retried_after_transient_failures() {
    let gw = start(retry_config).await;
    // Two 5xx, then an answer: within the two retries.
    let (status, model, body) = ask(&gw, "flaky", Some("flaky=500@2#json"), false).await;
    assert_eq!((status, model.as_str()), (200, "flaky"), "{body}");
    let (status, model, body) = ask(&gw, "flaky", Some("flaky=502@2#stream"), true).await;
    assert_eq!((status, model.as_str()), (200, "flaky"), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    // Three failures exhaust them: the upstream's error reaches the client.
    let (status, _, body) = ask(&gw, "flaky", Some("flaky=500@3#exhausted"), false).await;
    assert_eq!(status, 500, "{body}");
}

#[tokio::test]
async fn retries_honour_retry_after_up_to_the_cap() {
    let gw = start(retry_config).await;
    let started = Instant::now();
    let (status, model, body) = ask(&gw, "flaky", Some("flaky=429:1@1#wait"), false).await;
    assert_eq!((status, model.as_str()), (200, "flaky"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1_000), "waited the asked second: {:?}", started.elapsed());
    // A Retry-After above the model's cap is not waited for.
    let started = Instant::now();
    let (status, _, body) = ask(&gw, "impatient", Some("impatient=429:1@1#cap"), false).await;
    assert_eq!(status, 429, "{body}");
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let gw = start(retry_config).await;
    // A retry would succeed (the fault hits only the first request), so a 400 proves none ran.
    let (status, _, body) = ask(&gw, "flaky", Some("flaky=400@1#client"), false).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_named_model_falls_back_to_its_configured_fallbacks() {
    let gw = start(retry_config).await;
    for stream in [false, true] {
        let (status, model, body) = ask(&gw, "dead", None, stream).await;
        assert_eq!((status, model.as_str()), (200, "secondary"), "stream={stream}: {body}");
    }
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_fallback_warning_names_the_request_it_belongs_to() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber in this test process");
    let gw = start(config).await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "primary=503")
        .json(&json!({"model": "pair", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("reachable");
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-switchyard-request-id"].to_str().expect("id").to_owned();
    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8 logs");
    let warning = text
        .lines()
        .find(|line| line.contains("trying the next model"))
        .unwrap_or_else(|| panic!("no fallback warning in {text}"));
    assert!(warning.contains(&request_id), "the warning carries the request id {request_id}: {warning}");
    assert!(warning.contains("primary"), "{warning}");
}
