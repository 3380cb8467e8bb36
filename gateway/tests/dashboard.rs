//! `deploy/grafana/switchyard.json` reads only series the gateway exports: every metric name
//! in a panel's PromQL must appear in `/metrics` after a few requests, so the dashboard
//! cannot drift from `gateway/src/metrics.rs`.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use gateway::store::keys::{create_key, NewKey};
use gateway::{Application, Config};
use serde_json::{json, Value};
use tokio::sync::oneshot;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression that name switchyard series.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("switchyard_") {
        let start = i + found;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

async fn serve(config: &str) -> (SocketAddr, std::sync::Arc<gateway::app::AppState>, oneshot::Sender<()>) {
    let config = Config::from_toml(config).expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("gateway builds");
    let (addr, state) = (app.addr(), app.state());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (addr, state, stop)
}

#[tokio::test]
async fn every_dashboard_series_is_exported() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/switchyard.json")).expect("dashboard file");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard["panels"], &mut all);
    assert!(all.len() >= 20, "the dashboard has its panels: {}", all.len());
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate panel id");
    }
    let used: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoint = repo().join("models/selector/default");
    let config = format!(
        r#"
[database]
url = "sqlite://{db}"
spill_path = "{spill}"
batch_interval_ms = 10

[limits.tenants.acme]
rpm = 1

# The streamed request repeats the first one: an exact hit.
[cache]
exact = true

[router]
checkpoint = "{checkpoint}"
decision_timeout_ms = 5000

[providers.mock]
kind = "mock"

[models."gpt-4-1106-preview"]
provider = "mock"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[models."mixtral-8x7b-instruct-v0.1"]
provider = "mock"
input_usd_per_mtok = 0.6
output_usd_per_mtok = 0.6

[routes.auto]
candidates = ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
default = "mixtral-8x7b-instruct-v0.1"
"#,
        db = dir.path().join("log.db").display(),
        spill = dir.path().join("spill.jsonl").display(),
        checkpoint = checkpoint.display(),
    );
    let (addr, state, _stop) = serve(&config).await;
    // A second gateway whose Redis is unreachable: the limiter's error series.
    let broken = format!(
        "[database]\nurl = \"sqlite::memory:\"\nspill_path = \"{}\"\n[limits]\nredis_url = \"redis://127.0.0.1:9\"\n[limits.tenants.acme]\nrpm = 1\n[providers.mock]\nkind = \"mock\"\n[models.m]\nprovider = \"mock\"\n",
        dir.path().join("spill2.jsonl").display()
    );
    let (broken_addr, broken_state, _stop2) = serve(&broken).await;

    let client = reqwest::Client::new();
    let chat = |addr: SocketAddr, model: &str, stream: bool, key: Option<String>| {
        let mut request = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Write a haiku about rivers."}]}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    for stream in [false, true] {
        let response = chat(addr, "auto", stream, None).await.expect("gateway");
        assert_eq!(response.status(), 200);
        let _ = response.text().await;
    }
    let key = create_key(&state.store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key").1;
    assert_eq!(chat(addr, "gpt-4-1106-preview", false, Some(key.clone())).await.expect("gateway").status(), 200);
    assert_eq!(chat(addr, "gpt-4-1106-preview", false, Some(key)).await.expect("gateway").status(), 429);
    let key = create_key(&broken_state.store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key").1;
    assert_eq!(chat(broken_addr, "m", false, Some(key)).await.expect("gateway").status(), 200);
    // Rows reach the log writer before the scrape.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let metrics = client.get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("body");
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(missing.is_empty(), "dashboard series not in /metrics: {missing:?}\n{metrics}");
    // The dashboard covers what the brief asked for.
    for needed in [
        "switchyard_request_duration_seconds_bucket",
        "switchyard_time_to_first_token_seconds_bucket",
        "switchyard_tokens_total",
        "switchyard_cost_usd_total",
        "switchyard_routing_decisions_total",
        "switchyard_embed_queue_depth",
        "switchyard_breaker_open",
        "switchyard_log_rows",
        "switchyard_log_writer_queued_rows",
        "switchyard_db_pool_connections",
        "switchyard_limit_rejections_total",
        "switchyard_cache_results_total",
    ] {
        assert!(used.contains(needed), "no panel reads {needed}");
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(r#"sum(rate(switchyard_a_total{x="switchyard_not"}[5m])) / clamp_min(sum(rate(switchyard_b[5m])), 1e-9)"#);
    assert!(names.contains("switchyard_a_total") && names.contains("switchyard_b"), "{names:?}");
}
