//! Learned routing end to end: the real MiniLM embedder, a selector trained here on a task
//! whose right answer is known (code → `coder`, chit-chat → `chatter`), and requests through
//! the running gateway.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

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
    type Row = (String, Option<String>, Option<f64>, Option<String>);
    let rows: Vec<Row> =
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

/// Every answered row of a SQLite outcome log: (model, propensity, candidates JSON).
async fn logged_decisions(db: &str) -> Vec<(String, f64, Value)> {
    let pool = sqlx::SqlitePool::connect(db).await.expect("db");
    let rows: Vec<(String, Option<f64>, Option<String>)> =
        sqlx::query_as("SELECT model, propensity, candidates FROM request_log WHERE status = 200").fetch_all(&pool).await.expect("rows");
    rows.into_iter()
        .map(|(model, p, c)| (model, p.expect("propensity"), serde_json::from_str(&c.expect("candidates")).expect("json")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_propensities_are_the_frequencies_the_gateway_explores_with() {
    let (normal, _) = checkpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    // A hot softmax with no share cap: both candidates are served often.
    let gw = start(|mock| {
        routing_config(mock, normal, "", &db).replace("exploration = 0.0", "exploration = 1.0\nexploration_temperature = 0.5")
    })
    .await;
    let prompt = TEST_CODE[0];
    let n = 400;
    let mut served = std::collections::HashMap::<String, usize>::new();
    for _ in 0..n {
        let (model, decision) = routed_model(&gw, prompt, None).await;
        assert!(decision == "selected" || decision == "explored", "{decision}");
        *served.entry(model).or_default() += 1;
    }
    gw.stop().await;
    let rows = logged_decisions(&db).await;
    assert_eq!(rows.len(), n);
    // Same prompt, same predictions: every row logs the same distribution.
    let mut logged = std::collections::HashMap::<String, f64>::new();
    for (model, propensity, candidates) in &rows {
        let scores = candidates["scores"].as_array().expect("scores");
        let total: f64 = scores.iter().map(|s| s["probability"].as_f64().expect("probability")).sum();
        assert!((total - 1.0).abs() < 1e-9, "{candidates}");
        let own = scores.iter().find(|s| s["model"] == model.as_str()).expect("chosen is scored");
        // Within an ulp or two: serde_json's default float parsing is not exactly round-trip.
        let own_probability = own["probability"].as_f64().expect("probability");
        assert!((own_probability - propensity).abs() <= 1e-12, "the propensity is the chosen one's probability: {own_probability} vs {propensity}");
        let before = *logged.entry(model.clone()).or_insert(*propensity);
        assert!((before - propensity).abs() < 1e-9);
    }
    for (model, count) in &served {
        let p = logged[model];
        let empirical = *count as f64 / n as f64;
        // Four standard errors of a binomial share.
        let tolerance = 4.0 * (p * (1.0 - p) / n as f64).sqrt();
        assert!((empirical - p).abs() <= tolerance, "{model}: served {empirical:.3}, logged propensity {p:.3} (±{tolerance:.3})");
    }
    assert_eq!(served.len(), 2, "a hot softmax explores: {served:?}");
    assert!(logged["coder"] > logged["chatter"], "the selector's best (coder, for code) stays the likeliest: {logged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_gateway_explores_each_prompt_the_same_way_every_time() {
    let (normal, _) = checkpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    // A hot softmax: both candidates are likely for every prompt, so only the seed can make
    // the choices repeat.
    let config = |mock, seed: &str| {
        routing_config(mock, normal, seed, &db).replace("exploration = 0.0", "exploration = 1.0\nexploration_temperature = 0.5")
    };
    let prompts: Vec<String> = (0..30).map(|i| format!("{} (variant {i})", TEST_CODE[i % TEST_CODE.len()])).collect();
    async fn serve_all(gw: &common::TestGateway, prompts: &[String]) -> Vec<String> {
        let requests = prompts.iter().map(|p| routed_model(gw, p, None));
        futures_util::future::join_all(requests).await.into_iter().map(|(model, _)| model).collect()
    }
    let seeded = start(|mock| config(mock, "exploration_seed = 7")).await;
    let first = serve_all(&seeded, &prompts).await;
    let again = serve_all(&seeded, &prompts).await;
    seeded.stop().await;
    assert_eq!(first, again, "a seeded gateway repeats its choices, whatever the arrival order");
    let explored = first.iter().filter(|m| *m == "chatter").count();
    assert!((1..30).contains(&explored), "the seed keeps exploring across prompts: {explored} of 30 to chatter");

    let other_seed = start(|mock| config(mock, "exploration_seed = 8")).await;
    let reseeded = serve_all(&other_seed, &prompts).await;
    other_seed.stop().await;
    // How likely two independent draws repeat all 30 choices, from the logged probabilities
    // (each prompt is logged three times: two seeded runs and the reseeded one).
    let rows = logged_decisions(&db).await;
    assert_eq!(rows.len(), 90);
    let log_repeat: f64 = rows
        .iter()
        .map(|(_, _, candidates)| {
            let scores = candidates["scores"].as_array().expect("scores");
            let p = scores.iter().find(|s| s["model"] == "chatter").and_then(|s| s["probability"].as_f64()).expect("chatter scored");
            (p * p + (1.0 - p) * (1.0 - p)).ln()
        })
        .sum::<f64>()
        / 3.0;
    assert!(log_repeat.exp() < 1e-3, "the softmax is hot enough that a repeat by chance is rare: {}", log_repeat.exp());
    assert_ne!(first, reseeded, "another seed draws differently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_decides_its_share_of_exploring_routes_and_leaves_when_removed() {
    let (normal, swapped) = checkpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    let live = tmp.path().join("live");
    copy_checkpoint(normal, &live);
    // Where `switchyard learn` puts an undecided candidate; the gateway looks there by default.
    let challenger = tmp.path().join("live.challenger");
    copy_checkpoint(swapped, &challenger);
    // `auto` explores (a nearly greedy softmax: the active alone would all but always pick
    // coder for code); `steady` does not, so no challenger may serve it.
    let gw = start(|mock| {
        routing_config(mock, &live, "challenger_share = 0.5", &db)
            .replace("exploration = 0.0", "exploration = 0.05\nexploration_temperature = 0.001")
            + "\n[routes.steady]\ncandidates = [\"coder\", \"chatter\"]\ndefault = \"chatter\"\ntradeoff = \"best\"\nexploration = 0.0\n"
    })
    .await;
    let n = 60;
    let mut served = std::collections::HashMap::<String, usize>::new();
    for i in 0..n {
        let (model, decision) = routed_model(&gw, TEST_CODE[i % TEST_CODE.len()], None).await;
        let expected = if model == "chatter" { "explored" } else { "selected" };
        assert_eq!(decision, expected, "{model}");
        *served.entry(model).or_default() += 1;
    }
    // Half the decisions are the challenger's, which sends code to chatter: 30 expected;
    // outside 15..=45 has probability below 1e-4.
    let by_challenger = served.get("chatter").copied().unwrap_or(0);
    assert!((15..=45).contains(&by_challenger), "{served:?}");
    for prompt in TEST_CODE {
        let response = gw
            .chat(json!({"model": "steady", "messages": [{"role": "user", "content": prompt}]}))
            .await;
        assert_eq!(response.headers()["x-switchyard-model"], "coder", "a route that does not explore serves the active checkpoint");
    }

    // Retired (as `switchyard learn` does: renamed away, then deleted): gone after a reload.
    std::fs::rename(&challenger, tmp.path().join("retired")).expect("retire");
    let reload = gw.client.post(gw.url("/admin/reload")).send().await.expect("reachable");
    assert_eq!(reload.status(), 200);
    for prompt in TEST_CODE {
        assert_eq!(routed_model(&gw, prompt, None).await.0, "coder", "no challenger: the active decides");
    }
    gw.stop().await;

    // Every challenger-era row of `auto` logs the mixture: coder 0.5 × ~1 (active) + 0.5 × ~0
    // (challenger), chatter the other half, each chosen row's propensity its own share.
    let pool = sqlx::SqlitePool::connect(&db).await.expect("db");
    let rows: Vec<(String, f64, String)> = sqlx::query_as(
        "SELECT model, propensity, candidates FROM request_log WHERE route = 'auto' AND status = 200 ORDER BY created_at, id",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), n + TEST_CODE.len());
    for (model, propensity, candidates) in rows.iter().take(n) {
        let candidates: Value = serde_json::from_str(candidates).expect("json");
        let scores = candidates["scores"].as_array().expect("scores");
        let p = |m: &str| scores.iter().find(|s| s["model"] == m).and_then(|s| s["probability"].as_f64()).expect("scored");
        assert!((p("coder") - 0.5).abs() < 0.01 && (p("chatter") - 0.5).abs() < 0.01, "{candidates}");
        assert!((p(model) - propensity).abs() < 1e-12);
    }
    for (_, propensity, _) in rows.iter().skip(n) {
        assert!(*propensity > 0.99, "after the challenger left, the active's near-greedy choice: {propensity}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_header_leaves_out_candidates_predicted_above_it() {
    let (normal, _) = checkpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    let gw = start(|mock| routing_config(mock, normal, "", &db)).await;
    let prompt = TEST_CODE[1];
    assert_eq!(routed_model(&gw, prompt, None).await.0, "coder");
    let send = |max: &'static str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .header("x-switchyard-max-cost-usd", max)
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]}))
            .send()
    };
    // coder is priced 100× chatter: a ceiling between their predicted costs leaves chatter.
    let capped = send("0.001").await.expect("reachable");
    assert_eq!(capped.status(), 200);
    assert_eq!(capped.headers()["x-switchyard-model"], "chatter");
    assert_eq!(capped.headers()["x-switchyard-decision"], "selected");
    let bad = send("-1").await.expect("reachable");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("error body");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    gw.stop().await;
    let rows = logged_decisions(&db).await;
    let capped_row = rows.iter().find(|(m, _, _)| m == "chatter").expect("the capped request's row");
    let scores = capped_row.2["scores"].as_array().expect("scores");
    let coder = scores.iter().find(|s| s["model"] == "coder").expect("coder is still scored");
    assert!(coder["cost_usd"].as_f64().expect("cost") > 0.001, "{coder}");
    assert_eq!(coder["probability"].as_f64(), Some(0.0), "above the ceiling: never chosen");
    assert_eq!(capped_row.1, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsure_selector_defers_to_the_route_default() {
    let (normal, _) = checkpoints();
    // Quality is 0..1, so no candidate can beat the default by 1.5 at `best`: every decision
    // is unsure and the default serves it; a margin of zero leaves the selector's choice.
    let unsure = start(|mock| routing_config(mock, normal, "", "sqlite::memory:").replace("exploration = 0.0", "exploration = 0.0\nmin_advantage = 1.5")).await;
    for prompt in TEST_CODE {
        assert_eq!(routed_model(&unsure, prompt, None).await, ("chatter".into(), "unsure".into()), "{prompt}");
    }
    let sure = start(|mock| routing_config(mock, normal, "", "sqlite::memory:").replace("exploration = 0.0", "exploration = 0.0\nmin_advantage = 0")).await;
    for prompt in TEST_CODE {
        assert_eq!(routed_model(&sure, prompt, None).await, ("coder".into(), "selected".into()), "{prompt}");
    }
}
