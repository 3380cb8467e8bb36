//! Helpers for the `store_*` integration tests: a fresh Postgres database per test, a TCP
//! proxy that can cut the database off, and a fully populated outcome row.
//!
//! Postgres is expected at 127.0.0.1:5432 as user `postgres` with trust auth
//! (`SWITCHYARD_TEST_PG` overrides the server URL, without a database name).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use gateway::store::{embedding_to_bytes, DecisionRecord, FailedAttempt, LogRow, ScoredCandidate};
use sqlx::{Connection, Executor, PgConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use uuid::Uuid;

pub fn pg_server() -> String {
    std::env::var("SWITCHYARD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A uniquely named database, dropped when this goes out of scope.
pub struct TestPg {
    pub name: String,
    pub url: String,
}

impl TestPg {
    pub async fn create() -> Self {
        let name = format!("switchyard_test_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .expect("Postgres at 127.0.0.1:5432 (start it: pg_ctlcluster --skip-systemctl-redirect 15 main start)");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = format!("{}/{name}", pg_server());
        Self { name, url }
    }

    /// The URL of this database through another host:port (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let server = pg_server();
        let user = server
            .strip_prefix("postgres://")
            .and_then(|rest| rest.split_once('@'))
            .map(|(user, _)| user.to_owned())
            .unwrap_or_else(|| "postgres".into());
        format!("postgres://{user}@{addr}/{}", self.name)
    }

    /// Rows in `request_log`, counted over a direct connection (not through any proxy).
    pub async fn count_rows(&self) -> i64 {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect to test database");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM request_log")
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        let _ = conn.close().await;
        count
    }

    pub async fn ids(&self) -> Vec<Uuid> {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect to test database");
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM request_log ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .expect("read ids");
        let _ = conn.close().await;
        ids
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server())).await.ok()?;
                admin
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A loopback TCP proxy in front of a server, which a test can cut (drop every connection
/// and refuse new ones) and restore on the same port.
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let proxy = Self {
            addr,
            upstream,
            accept: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let connections = self.connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                connections.lock().expect("lock").push(conn.abort_handle());
            }
        });
        *self.accept.lock().expect("lock") = Some(task);
    }

    /// Drops every open connection and stops listening (new connections are refused).
    pub async fn cut(&self) {
        let task = self.accept.lock().expect("lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        for conn in self.connections.lock().expect("lock").drain(..) {
            conn.abort();
        }
        // Let the aborted tasks run their drops (closing the sockets).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding proxy: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind proxy on {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

pub fn pg_addr() -> SocketAddr {
    let server = pg_server();
    let host_port = server.rsplit('@').next().unwrap_or("127.0.0.1:5432");
    host_port.parse().expect("SWITCHYARD_TEST_PG must name an ip:port")
}

/// A UUIDv7 made at `t`, as the gateway makes a request's id when the request arrives.
pub fn v7_id_at(t: chrono::DateTime<Utc>) -> Uuid {
    let seconds = u64::try_from(t.timestamp()).expect("after 1970");
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, t.timestamp_subsec_nanos()))
}

/// Time as the databases keep it (microseconds), so that round trips compare equal.
pub fn now_micros() -> chrono::DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .expect("truncate time")
}

fn scored(model: &str, quality: f64, cost_usd: f64, latency_ms: f64, probability: f64) -> ScoredCandidate {
    ScoredCandidate {
        model: model.into(),
        quality,
        cost_usd,
        latency_ms,
        utility: quality - cost_usd * 50.0 - latency_ms * 2e-5,
        probability,
        input_usd_per_mtok: 0.15,
        output_usd_per_mtok: 0.6,
    }
}

/// A row with every field set.
pub fn full_row() -> LogRow {
    LogRow {
        id: Uuid::now_v7(),
        created_at: now_micros(),
        tenant: Some("acme".into()),
        key_id: Some(Uuid::now_v7()),
        route: Some("auto".into()),
        provider: "mock".into(),
        model: "gpt-4o-mini".into(),
        stream: true,
        candidates: Some(DecisionRecord {
            decision: Some("explored".into()),
            tradeoff: Some("quality=1,cost=0.05,latency=0.02".into()),
            decision_ms: Some(2.75),
            scores: vec![
                scored("gpt-4o-mini", 0.71, 0.0002, 420.5, 0.625),
                scored("claude", 0.83, 0.0011, 910.0, 0.375),
            ],
            shadow_version: Some("selector-shadow@2024-06-02".into()),
            failed_attempts: vec![FailedAttempt {
                model: "claude".into(),
                skipped: None,
                error_class: Some("upstream_5xx".into()),
                latency_ms: Some(31.5),
                retry: 1,
            }],
        }),
        propensity: Some(0.625),
        checkpoint_version: Some("selector-2024-06-01-abc123".into()),
        shadow_choice: Some("claude".into()),
        prompt_hash: Some(blake3::hash(b"hello").to_hex().to_string()),
        embedding: Some(embedding_to_bytes(&[0.1, -0.2, 0.3, 1.0e-7, -4.5])),
        prompt_text: Some("What is the capital of France? «Ünïcødé» 🚂".into()),
        answer_text: Some("Paris. «Ünïcødé»".into()),
        prompt_tokens: Some(12),
        completion_tokens: Some(34),
        cost_usd: Some(0.000_123_4),
        latency_ms: 812.25,
        first_token_ms: Some(95.5),
        status: 200,
        error_class: Some("none".into()),
        cache_result: Some("miss".into()),
    }
}

/// A row with only the required fields.
pub fn minimal_row() -> LogRow {
    LogRow {
        id: Uuid::now_v7(),
        created_at: now_micros(),
        tenant: None,
        key_id: None,
        route: None,
        provider: "mock".into(),
        model: "m".into(),
        stream: false,
        candidates: None,
        propensity: None,
        checkpoint_version: None,
        shadow_choice: None,
        prompt_hash: None,
        embedding: None,
        prompt_text: None,
        answer_text: None,
        prompt_tokens: None,
        completion_tokens: None,
        cost_usd: None,
        latency_ms: 1.5,
        first_token_ms: None,
        status: 502,
        error_class: Some("upstream_unreachable".into()),
        cache_result: None,
    }
}

/// Polls `check` every 20 ms until it is true or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
