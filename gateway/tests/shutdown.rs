//! Bounded graceful shutdown: streams in flight finish within `[server] shutdown_grace_ms`,
//! longer ones are cut, a request still waiting upstream is answered 503, and the outcome log
//! is flushed either way (rows counted in SQLite).

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

async fn start(dir: &Path, grace_ms: u64) -> Running {
    let config = Config::from_toml(&format!(
        r#"
[server]
shutdown_grace_ms = {grace_ms}

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
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 10_000).await;
    // ~12 chunks at 80 ms: about a second, well inside the 10 s grace.
    let (response, first) = stream_in_flight(gateway.addr, 80).await;
    let asked = Instant::now();
    gateway.stop.send(()).expect("server running");
    let body = rest(response, first).await;
    assert!(body.contains("data: [DONE]"), "the stream completed: {body}");
    assert!(!body.contains("shutting_down"), "{body}");
    gateway.served.await.expect("server task").expect("clean shutdown");
    assert!(asked.elapsed() < Duration::from_secs(8), "shutdown did not wait out the grace: {:?}", asked.elapsed());
    assert_eq!(rows(dir.path()).await, vec![(200, None)]);
}

#[tokio::test]
async fn a_stream_longer_than_the_grace_is_cut_and_still_logged() {
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 300).await;
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
    let dir = TempDir::new().expect("temp dir");
    let gateway = start(dir.path(), 300).await;
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
