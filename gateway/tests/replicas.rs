//! Two replicas behind one address, sharing the real Postgres (outcome log, keys, persisted
//! cache entries) and the real Redis (limits) on loopback, the way switchyard scales out:
//! limits and budgets hold across them, a semantic cache entry one replica wrote becomes a hit
//! on the other without a restart, and a checkpoint promoted once is picked up by both.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod redis_support;
mod selector_support;
mod store_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::app::AppState;
use gateway::store::keys::{create_key, NewKey};
use gateway::{Application, Config};
use redis_support::{redis_url, Prefix};
use selector_support::{checkpoints, copy_checkpoint, TEST_CODE};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use store_support::{wait_for, TestPg};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// One replica: the same config as its sibling, its own spill file.
struct Replica {
    addr: SocketAddr,
    state: Arc<AppState>,
    _stop: oneshot::Sender<()>,
}

async fn start_replica(config: &str) -> Replica {
    let config = Config::from_toml(config).expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("replica builds");
    let (stop, stopped) = oneshot::channel::<()>();
    let replica = Replica { addr: app.addr(), state: app.state(), _stop: stop };
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    replica
}

fn replica_config(index: usize, pg_url: &str, prefix: &str, checkpoint: &Path, dir: &Path) -> String {
    let verifier = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/verifier/default");
    format!(
        r#"
[database]
url = "{pg_url}"
spill_path = "{spill}"
batch_interval_ms = 10

[limits]
redis_url = "{redis}"
key_prefix = "{prefix}"
redis_timeout_ms = 500

# No Redis tier for the cache: what one replica stored can only reach the other through
# the database.
[cache]
exact = true
semantic = true
verifier = "{verifier}"
refresh_ms = 200
ttl_secs = 600

[router]
checkpoint = "{checkpoint}"
reload_poll_ms = 100
decision_timeout_ms = 10000

[providers.mock]
kind = "mock"

[models.coder]
provider = "mock"
input_usd_per_mtok = 20.0
output_usd_per_mtok = 60.0

[models.chatter]
provider = "mock"
input_usd_per_mtok = 0.2
output_usd_per_mtok = 0.5

[routes.auto]
candidates = ["coder", "chatter"]
default = "chatter"
tradeoff = "best"
exploration = 0.0
"#,
        spill = dir.join(format!("spill-{index}.jsonl")).display(),
        redis = redis_url(),
        verifier = verifier.display(),
        checkpoint = checkpoint.display(),
    )
}

/// A loopback TCP balancer: each new connection goes to the next replica in turn.
struct Balancer {
    addr: SocketAddr,
    connections: Arc<[AtomicUsize; 2]>,
}

async fn balance(backends: [SocketAddr; 2]) -> Balancer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind balancer");
    let addr = listener.local_addr().expect("balancer address");
    let connections = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counts = connections.clone();
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backend = next % 2;
            next += 1;
            counts[backend].fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(backends[backend]).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Balancer { addr, connections }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

/// A client that opens a new connection per request, so the balancer alternates replicas.
fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client")
}

async fn post(client: &reqwest::Client, addr: SocketAddr, key: &str, body: &Value, no_store: bool) -> reqwest::Response {
    let mut request = client.post(format!("http://{addr}/v1/chat/completions")).bearer_auth(key).json(body);
    if no_store {
        request = request.header("cache-control", "no-store");
    }
    request.send().await.expect("reachable")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// Waits (bounded) until the current UTC minute has at least 12 s left, so a burst falls in
/// one rpm window.
async fn fresh_minute() {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    if secs % 60.0 > 48.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.0 - secs % 60.0 + 0.05)).await;
    }
}

/// `switchyard_cache_entries{tier="semantic"}` of one replica.
async fn semantic_entries(client: &reqwest::Client, addr: SocketAddr) -> u64 {
    let text = client.get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("body");
    text.lines()
        .find_map(|line| line.strip_prefix("switchyard_cache_entries{tier=\"semantic\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn cache_rows(pg: &TestPg) -> i64 {
    let mut conn = PgConnection::connect(&pg.url).await.expect("connect");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cache_entries").fetch_one(&mut conn).await.expect("count");
    let _ = conn.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_limits_cache_entries_and_promotions() {
    let pg = TestPg::create().await;
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().expect("dir");
    let (normal, swapped) = checkpoints();
    let live = dir.path().join("active");
    copy_checkpoint(normal, &live);
    let a = start_replica(&replica_config(0, &pg.url, &prefix.0, &live, dir.path())).await;
    let b = start_replica(&replica_config(1, &pg.url, &prefix.0, &live, dir.path())).await;
    let balancer = balance([a.addr, b.addr]).await;
    let client = client();

    // Limits: rpm 6 for one key, 16 concurrent requests through the balancer.
    let (_, limited_key) =
        create_key(&a.state.store, NewKey { tenant: "acme".into(), rpm: Some(6), ..NewKey::default() }).await.expect("key");
    fresh_minute().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (client, addr, key) = (client.clone(), balancer.addr, limited_key.clone());
        tasks.push(tokio::spawn(async move {
            post(&client, addr, &key, &chat("chatter", &format!("hello #{i}")), true).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (6, 10), "exactly the limit succeeds across both replicas: {statuses:?}");
    let per_replica: Vec<usize> = balancer.connections.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(per_replica, [8, 8], "the balancer spread the burst over both replicas");

    // Budget: spent on replica A, refused on replica B.
    let (_, budget_key) = create_key(
        &a.state.store,
        NewKey { tenant: "initech".into(), budget_usd: Some(0.001), ..NewKey::default() },
    )
    .await
    .expect("key");
    let mut spent = false;
    for i in 0..50 {
        let response = post(&client, a.addr, &budget_key, &chat("coder", &format!("spend #{i}")), true).await;
        if response.status() == 429 {
            let body: Value = response.json().await.expect("error body");
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
            spent = true;
            break;
        }
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spent, "replica A refuses once the budget is spent");
    let on_b = post(&client, b.addr, &budget_key, &chat("coder", "one more on B"), true).await;
    assert_eq!(on_b.status(), 429, "replica B sees the budget replica A spent");
    let body: Value = on_b.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");

    // Semantic cache: A answers and persists; B, already running, loads the entry within its
    // refresh period and serves a paraphrase of the question from it.
    let (_, key) = create_key(&a.state.store, NewKey { tenant: "globex".into(), ..NewKey::default() }).await.expect("key");
    let rows_before = cache_rows(&pg).await;
    let first = post(&client, a.addr, &key, &chat("auto", "How do I reverse a string in JavaScript?"), false).await;
    assert_eq!((first.status().as_u16(), header(&first, "x-switchyard-cache")), (200, "miss".to_owned()));
    let first: Value = first.json().await.expect("json");
    assert!(
        wait_for(Duration::from_secs(5), async || cache_rows(&pg).await > rows_before).await,
        "replica A persisted its answer"
    );
    // Asking B before it holds the entry would store B's own answer: wait for its refresh.
    assert!(
        wait_for(Duration::from_secs(5), async || semantic_entries(&client, b.addr).await >= 1).await,
        "replica B loaded the entry replica A persisted"
    );
    let response = post(&client, b.addr, &key, &chat("auto", "How can I reverse a string in JavaScript?"), false).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-switchyard-cache")), (200, "semantic".to_owned()));
    let served_by_b: Value = response.json().await.expect("json");
    assert_eq!(served_by_b["id"], first["id"], "the very answer replica A stored");

    // Promotion: both replicas route a code prompt to `coder`; one promotion of the swapped
    // checkpoint into the shared directory and both route it to `chatter`.
    let routed = async |replica: &Replica| {
        let response = post(&client, replica.addr, &key, &chat("auto", TEST_CODE[0]), true).await;
        assert_eq!(response.status(), 200);
        header(&response, "x-switchyard-model")
    };
    assert_eq!(routed(&a).await, "coder");
    assert_eq!(routed(&b).await, "coder");
    let candidate = dir.path().join("candidate");
    copy_checkpoint(swapped, &candidate);
    training::db::promote(&candidate, &live).expect("promote");
    for (name, replica) in [("A", &a), ("B", &b)] {
        assert!(
            wait_for(Duration::from_secs(10), async || routed(replica).await == "chatter").await,
            "replica {name} picked up the promoted checkpoint"
        );
    }
}
