//! Bounded graceful shutdown: streams in flight finish within `[server] shutdown_grace_ms`,
//! longer ones are cut, a request still waiting upstream is answered 503, and the outcome log
//! is flushed either way (rows counted in SQLite). Each case runs on both serving runtimes:
//! the shared work-stealing one and one single-threaded runtime per serving thread.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gateway::{Application, Config};
use serde_json::json;
use sqlx::sqlite::SqlitePoolOptions;
use tempfile::TempDir;
use tokio::sync::oneshot;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), gateway::Error>>,
}

/// The serving runtimes every case runs on.
const RUNTIMES: [&str; 2] = ["shared", "per_core"];

async fn start(dir: &Path, grace_ms: u64, runtime: &str) -> Running {
    let config = Config::from_toml(&format!(
        r#"
[server]
shutdown_grace_ms = {grace_ms}
runtime = "{runtime}"
serving_threads = 2

[database]
url = "sqlite://{db}"
spill_path = "{spill}"
batch_interval_ms = 10

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
"#,
        db = dir.join("log.db").display(),
        spill = dir.join("spill.jsonl").display(),
    ))
    .expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("gateway builds");
    let addr = app.addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Running { addr, stop, served }
}

/// Starts a stream with `per_token_ms` between chunks and returns it once the first chunk
/// has arrived (so it is surely in flight).
async fn stream_in_flight(addr: SocketAddr, per_token_ms: u64) -> (reqwest::Response, Vec<u8>) {
    let mut response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("x-mock-per-token-ms", per_token_ms.to_string())
        .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "tell me a long story"}]}))
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.expect("first chunk").expect("stream has a chunk");
    (response, first.to_vec())
}

async fn rest(response: reqwest::Response, mut body: Vec<u8>) -> String {
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// (status, error_class) of every logged row.
async fn rows(dir: &Path) -> Vec<(i64, Option<String>)> {
    let pool = SqlitePoolOptions::new()
        .connect(&format!("sqlite://{}", dir.join("log.db").display()))
        .await
        .expect("open log");
    let rows = sqlx::query_as::<_, (i64, Option<String>)>("SELECT status, error_class FROM request_log")
        .fetch_all(&pool)
        .await
        .expect("read rows");
    pool.close().await;
    rows
}

#[tokio::test]
async fn a_stream_in_flight_finishes_within_the_grace() {
    for runtime in RUNTIMES {
        a_stream_in_flight_finishes_within_the_grace_on(runtime).await;
    }
}

async fn a_stream_in_flight_finishes_within_the_grace_on(runtime: &str) {
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 10_000, runtime).await;
    // ~12 chunks at 80 ms: about a second, well inside the 10 s grace.
    let (response, first) = stream_in_flight(gateway.addr, 80).await;
    let asked = Instant::now();
    gateway.stop.send(()).expect("server running");
    let body = rest(response, first).await;
    assert!(body.contains("data: [DONE]"), "the stream completed: {body}");
    assert!(!body.contains("shutting_down"), "{body}");
    gateway.served.await.expect("server task").expect("clean shutdown");
    assert!(asked.elapsed() < Duration::from_secs(8), "{runtime}: shutdown did not wait out the grace: {:?}", asked.elapsed());
    assert_eq!(rows(dir.path()).await, vec![(200, None)]);
}

#[tokio::test]
async fn a_stream_longer_than_the_grace_is_cut_and_still_logged() {
    for runtime in RUNTIMES {
        a_stream_longer_than_the_grace_is_cut_and_still_logged_on(runtime).await;
    }
}

async fn a_stream_longer_than_the_grace_is_cut_and_still_logged_on(runtime: &str) {
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 300, runtime).await;
    // ~12 chunks at 1 s: far longer than the 300 ms grace.
    let (response, first) = stream_in_flight(gateway.addr, 1_000).await;
    let asked = Instant::now();
    gateway.stop.send(()).expect("server running");
    let body = rest(response, first).await;
    let cut_after = asked.elapsed();
    assert!(body.contains("shutting_down"), "the client is told why the stream ended: {body}");
    assert!(!body.contains("data: [DONE]"), "{body}");
    gateway.served.await.expect("server task").expect("clean shutdown");
    let stopped_after = asked.elapsed();
    assert!(cut_after >= Duration::from_millis(300), "cut before the grace was over: {cut_after:?}");
    assert!(stopped_after < Duration::from_secs(4), "shutdown is bounded: {stopped_after:?}");
    assert_eq!(rows(dir.path()).await, vec![(503, Some("shutdown".to_owned()))]);
}

#[tokio::test]
async fn a_request_still_waiting_upstream_when_the_grace_ends_gets_503_and_a_row() {
    for runtime in RUNTIMES {
        a_request_still_waiting_upstream_when_the_grace_ends_gets_503_and_a_row_on(runtime).await;
    }
}

async fn a_request_still_waiting_upstream_when_the_grace_ends_gets_503_and_a_row_on(runtime: &str) {
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 300, runtime).await;
    let addr = gateway.addr;
    // The upstream takes 20 s to answer: far past the 300 ms grace.
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-mock-first-token-ms", "20000")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "take your time"}]}))
            .send()
            .await
            .expect("gateway reachable")
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // surely waiting upstream now
    let asked = Instant::now();
    gateway.stop.send(()).expect("server running");
    let response = waiting.await.expect("client task");
    let answered_after = asked.elapsed();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    gateway.served.await.expect("server task").expect("clean shutdown");
    assert!(answered_after >= Duration::from_millis(300), "answered before the grace was over: {answered_after:?}");
    assert!(answered_after < Duration::from_secs(4), "shutdown is bounded: {answered_after:?}");
    assert_eq!(rows(dir.path()).await, vec![(503, Some("shutdown".to_owned()))]);
}

/// Per-core serving: many connections at once (handed out over the serving threads), JSON
/// and streamed, every answer whole and every row logged by the shutdown.
#[tokio::test]
async fn per_core_threads_serve_concurrent_connections_and_log_every_row() {
    const REQUESTS: usize = 48;
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 2_000, "per_core").await;
    let addr = gateway.addr;
    let requests = (0..REQUESTS).map(|i| async move {
        // A client per request: a connection per request.
        let client = reqwest::Client::new();
        let stream = i % 2 == 1;
        let response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": format!("question {i}")}]}))
            .send()
            .await
            .expect("gateway reachable");
        assert_eq!(response.status(), 200);
        let body = response.text().await.expect("body");
        if stream {
            assert!(body.contains("data: [DONE]"), "{body}");
        } else {
            let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
            assert!(answer["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0), "{answer}");
        }
    });
    futures_util::future::join_all(requests).await;
    gateway.stop.send(()).expect("server running");
    gateway.served.await.expect("server task").expect("clean shutdown");
    let logged = rows(dir.path()).await;
    assert_eq!(logged.len(), REQUESTS);
    assert!(logged.iter().all(|row| *row == (200, None)), "{logged:?}");
}

/// Per-core serving listens on one socket like the shared runtime: a second gateway on the
/// same address is refused.
#[tokio::test]
async fn a_second_per_core_gateway_cannot_take_the_same_port() {
    let dir = TempDir::new().expect("temp dir");
    let first = start(dir.path(), 1_000, "per_core").await;
    let config = Config::from_toml(&format!(
        r#"
[server]
runtime = "per_core"

[database]
url = "sqlite://{db}"

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
"#,
        db = dir.path().join("second.db").display(),
    ))
    .expect("config");
    let Err(error) = Application::build(&config, Some(first.addr)).await else {
        panic!("a second gateway bound {} too", first.addr);
    };
    assert!(error.to_string().contains("cannot listen"), "{error}");
    first.stop.send(()).expect("server running");
    first.served.await.expect("server task").expect("clean shutdown");
}

/// Open client connections per serving thread, from `/metrics` (the scrape's own connection
/// included).
async fn open_per_serving_thread(addr: SocketAddr) -> Vec<i64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("gateway reachable")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|line| line.starts_with("switchyard_serving_thread_connections{"))
        .map(|line| line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("gauge value"))
        .collect()
}

/// Per-core serving hands each new connection to the thread with the fewest open ones, so one
/// client's keep-alive connections spread evenly (a kernel hash over per-thread sockets
/// leaves them uneven by chance), and a closed connection no longer counts.
#[tokio::test]
async fn per_core_connections_spread_evenly_and_closed_ones_stop_counting() {
    const CONNECTIONS: i64 = 16;
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 1_000, "per_core").await;
    let addr = gateway.addr;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        // One client per connection, kept so that its keep-alive connection stays open.
        let client = reqwest::Client::new();
        let response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": format!("question {i}")}]}))
            .send()
            .await
            .expect("gateway reachable");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
        clients.push(client);
    }
    let open = open_per_serving_thread(addr).await;
    assert_eq!(open.len(), 2, "one gauge per serving thread: {open:?}");
    assert_eq!(open.iter().sum::<i64>(), CONNECTIONS + 1, "{open:?}");
    let (most, fewest) = (open.iter().max().copied().unwrap_or(0), open.iter().min().copied().unwrap_or(0));
    assert!(most - fewest <= 1, "connections spread unevenly: {open:?}");
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_per_serving_thread(addr).await;
        if open.iter().sum::<i64>() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "closed connections still counted: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.stop.send(()).expect("server running");
    gateway.served.await.expect("server task").expect("clean shutdown");
}
