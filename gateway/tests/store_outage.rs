//! The whole gateway through a Postgres outage: a proxy between the gateway and Postgres is
//! cut in the middle of a load and restored. Every request must succeed, and once the
//! database is back every request must have exactly one row.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::{Application, Config};
use store_support::{wait_for, TcpProxy, TestPg};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Upper bound on the load; the test stops it well before, once each phase has had its share.
const MAX_REQUESTS: usize = 20_000;
/// Requests to see in each phase: before the cut, during it, after the restore.
const PER_PHASE: usize = 250;
const CLIENTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_and_every_row_lands_through_a_database_outage() {
    let db = TestPg::create().await;
    let proxy = TcpProxy::start(store_support::pg_addr()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::from_toml(&format!(
        r#"
[database]
url = "{url}"
spill_path = "{spill}"
batch_interval_ms = 20
retry_interval_ms = 100
write_timeout_ms = 1000

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"#,
        url = db.url_via(proxy.addr),
        spill = dir.path().join("spill.jsonl").display(),
    ))
    .expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("gateway builds");
    let addr = app.addr();
    let state = app.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = client.clone();
        let sent = sent.clone();
        let done = done.clone();
        let enough = enough.clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while !enough.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS {
                let i = ids.len();
                let response = client
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .json(&serde_json::json!({
                        "model": "m",
                        "stream": i % 3 == 0,
                        "messages": [{"role": "user", "content": format!("request {i}")}],
                    }))
                    .send()
                    .await
                    .expect("gateway answers");
                assert_eq!(response.status(), 200, "every request succeeds, outage or not");
                let id = response
                    .headers()
                    .get("x-switchyard-request-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| Uuid::parse_str(v).ok())
                    .expect("request id header");
                response.bytes().await.expect("body");
                ids.push(id);
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ids
        }));
    }

    // Cut the database once the load is going; restore it once the writer has really failed
    // (so the outage is not just a gap between batches) and requests went on meanwhile.
    let phase = |n: usize| {
        let done = done.clone();
        async move { wait_for(Duration::from_secs(60), async || done.load(Ordering::Relaxed) >= n).await }
    };
    assert!(phase(PER_PHASE).await);
    proxy.cut().await;
    let cut_at = done.load(Ordering::Relaxed);
    let ready = client.get(format!("http://{addr}/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 503, "/ready reports the database");
    assert!(
        wait_for(Duration::from_secs(30), async || state.log.stats().write_failures > 0).await,
        "the writer noticed the outage: {:?}",
        state.log.stats()
    );
    assert!(phase(cut_at + PER_PHASE).await);
    proxy.restore().await;
    let restored_at = done.load(Ordering::Relaxed);
    let ready = client.get(format!("http://{addr}/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 200);
    assert!(phase(restored_at + PER_PHASE).await);
    enough.store(true, Ordering::Relaxed);

    let mut ids = BTreeSet::new();
    for task in clients {
        ids.extend(task.await.expect("client task"));
    }
    let requests = done.load(Ordering::Relaxed);
    assert_eq!(ids.len(), requests);
    assert!(requests < MAX_REQUESTS, "the test stopped the load, not the cap");
    eprintln!("{requests} requests: {cut_at} before the cut, {} during, {} after", restored_at - cut_at, requests - restored_at);

    let landed = wait_for(Duration::from_secs(30), async || db.count_rows().await == requests as i64).await;
    let stats = state.log.stats();
    assert!(landed, "rows: {} of {requests}; writer {stats:?}", db.count_rows().await);
    assert!(stats.spilled > 0, "rows went through the spill file: {stats:?}");
    assert_eq!(stats.dropped_channel_full + stats.dropped_spill_failed, 0, "{stats:?}");

    let _ = stop.send(());
    server.await.expect("server task").expect("server ran");
    assert_eq!(db.count_rows().await, requests as i64);
    let stored: BTreeSet<Uuid> = db.ids().await.into_iter().collect();
    assert_eq!(stored, ids, "exactly the requests' ids");
    assert!(!dir.path().join("spill.jsonl").exists());
}
