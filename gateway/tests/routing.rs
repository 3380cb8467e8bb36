//! Learned routing end to end: the real MiniLM embedder, a selector trained here on a task
//! whose right answer is known (code → `coder`, chit-chat → `chatter`), and requests through
//! the running gateway.

mod common;
mod selector_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::start;
use selector_support::{checkpoints, copy_checkpoint, TEST_CHAT, TEST_CODE};
use serde_json::{json, Value};

fn routing_config(mock: SocketAddr, checkpoint: &Path, extra_router: &str, database: &str) -> String {
    // Tests run in parallel on small machines: a generous deadline keeps a slow embed from
    // being shed (the shed test sets its own).
    let deadline = if extra_router.contains("decision_timeout_ms") { "" } else { "decision_timeout_ms = 10000" };
    format!(
        r#"
[providers.mock]
kind = "mock"
base_url = "http://{mock}/v1"

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

[router]
checkpoint = "{}"
reload_poll_ms = 0
{deadline}
{extra_router}

[database]
url = "{database}"
"#,
        checkpoint.display()
    )
}

async fn routed_model(gw: &common::TestGateway, prompt: &str, tradeoff: Option<&str>) -> (String, String) {
    let mut request = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]}));
    if let Some(tradeoff) = tradeoff {
        request = request.header("x-switchyard-tradeoff", tradeoff);
    }
    let response = request.send().await.expect("reachable");
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
    (header("x-switchyard-model"), header("x-switchyard-decision"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_where_the_selector_says_and_tradeoff_flips_them() {
    let (normal, _) = checkpoints();
    let gw = start(|mock| routing_config(mock, normal, "", "sqlite::memory:")).await;
    for prompt in TEST_CODE {
        assert_eq!(routed_model(&gw, prompt, None).await, ("coder".into(), "selected".into()), "{prompt}");
    }
    for prompt in TEST_CHAT {
        assert_eq!(routed_model(&gw, prompt, None).await.0, "chatter", "{prompt}");
    }
    // Same code prompts, but the caller cares about cost: the cheap model wins.
    for prompt in TEST_CODE {
        assert_eq!(routed_model(&gw, prompt, Some("cheap")).await.0, "chatter", "{prompt}");
        assert_eq!(routed_model(&gw, prompt, Some("quality=1,cost=0")).await.0, "coder", "{prompt}");
    }
    let bad = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-switchyard-tradeoff", "speed=11")
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("reachable");
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_decision_deadline_sheds_to_the_default_model() {
    let (normal, _) = checkpoints();
    let gw = start(|mock| routing_config(mock, normal, "decision_timeout_ms = 0", "sqlite::memory:")).await;
    let (model, decision) = routed_model(&gw, "Write a Go HTTP server with graceful shutdown", None).await;
    assert_eq!((model.as_str(), decision.as_str()), ("chatter", "shed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_choices_are_logged_but_never_served() {
    let (normal, swapped) = checkpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    let shadow = format!("shadow_checkpoint = \"{}\"", swapped.display());
    let gw = start(|mock| routing_config(mock, normal, &shadow, &db)).await;
    for prompt in TEST_CODE {
        assert_eq!(routed_model(&gw, prompt, None).await.0, "coder", "served by the active checkpoint");
    }
    gw.stop().await;
    let pool = sqlx::SqlitePool::connect(&db).await.expect("db");
    let rows: Vec<(String, Option<String>, Option<f64>, Option<String>)> =
        sqlx::query_as("SELECT model, shadow_choice, propensity, candidates FROM request_log")
            .fetch_all(&pool)
            .await
            .expect("rows");
    assert_eq!(rows.len(), TEST_CODE.len());
    for (model, shadow_choice, propensity, candidates) in rows {
        assert_eq!(model, "coder");
        assert_eq!(shadow_choice.as_deref(), Some("chatter"), "the swapped shadow prefers chatter for code");
        assert_eq!(propensity, Some(1.0));
        let candidates: Value = serde_json::from_str(&candidates.expect("decision json")).expect("json");
        assert_eq!(candidates["decision"], "selected");
        assert_eq!(candidates["scores"].as_array().map(Vec::len), Some(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_switches_behaviour_without_dropping_requests() {
    let (normal, swapped) = checkpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let live = tmp.path().join("live");
    copy_checkpoint(normal, &live);
    let gw = Arc::new(start(|mock| routing_config(mock, &live, "", "sqlite::memory:")).await);
    let prompt = TEST_CODE[0];
    assert_eq!(routed_model(&gw, prompt, None).await.0, "coder");

    // Keep traffic flowing while the checkpoint changes underneath.
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (gw, failures, sent) = (gw.clone(), failures.clone(), sent.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let response = gw
                    .chat(json!({"model": "auto", "messages": [{"role": "user", "content": format!("{} #{i}", TEST_CHAT[i % 3])}]}))
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if response.status() != 200 || response.text().await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    copy_checkpoint(swapped, &live);
    let reload = gw.client.post(gw.url("/admin/reload")).send().await.expect("reachable");
    assert_eq!(reload.status(), 200, "{:?}", reload.text().await);
    assert_eq!(routed_model(&gw, prompt, None).await.0, "chatter", "the swapped checkpoint is live");
    load.await.expect("load task");
    assert_eq!(sent.load(Ordering::Relaxed), 200);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}
