//! `/dashboard` and its JSON API read the outcome log: seeded rows with known counts, spend and
//! cache results must come back as the same numbers, on SQLite and on Postgres; with a master
//! key configured, no key or a wrong one is refused.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::{DurationRound, TimeDelta};
use gateway::store::{LogRow, LogStore, Store};
use gateway::{Application, Config};
use serde_json::{json, Value};
use store_support::{minimal_row, now_micros, v7_id_at, TestPg};
use tempfile::TempDir;
use tokio::sync::oneshot;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Gateway {
    addr: SocketAddr,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

impl Gateway {
    /// A gateway on `db_url` (a fresh SQLite file when `None`), seeded with `rows`.
    async fn start(db_url: Option<&str>, server: &str, router: &str, rows: &[LogRow]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = db_url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("log.db").display()));
        let config = Config::from_toml(&format!(
            r#"
[server]
{server}

[router]
reload_poll_ms = 0
{router}

[database]
url = "{url}"
spill_path = "{spill}"

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"
"#,
            spill = dir.path().join("spill.jsonl").display(),
        ))
        .expect("config");
        let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("gateway builds");
        app.state().store.insert_rows(rows).await.expect("seed rows");
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Self {
            addr: app.addr(),
            client: reqwest::Client::new(),
            _stop: stop,
            _dir: dir,
        };
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(key) = bearer {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("request")
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.get(path, None).await;
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("json")
    }
}

/// A row `minutes_ago` old for `tenant` on `model`.
#[allow(clippy::too_many_arguments)]
fn row(minutes_ago: i64, tenant: Option<&str>, model: &str, cost: f64, latency: f64, cache: Option<&str>, candidates: Option<Value>, status: i32) -> LogRow {
    // As the gateway logs a request: `created_at` is the time in its id.
    let arrived = (now_micros() - TimeDelta::minutes(minutes_ago)).duration_trunc(TimeDelta::milliseconds(1)).expect("ms");
    LogRow {
        id: v7_id_at(arrived),
        created_at: arrived,
        tenant: tenant.map(str::to_owned),
        route: Some("auto".into()),
        model: model.into(),
        cost_usd: Some(cost),
        latency_ms: latency,
        cache_result: cache.map(str::to_owned),
        candidates: candidates.map(|v| serde_json::from_value(v).expect("a valid decision record")),
        status,
        error_class: None,
        ..minimal_row()
    }
}

/// 10 rows in the last day plus 2 older ones that no 24-hour view may count.
///
/// - models: big ×4, small ×6 (in the window)
/// - tenants: acme 4 × 0.25 = 1.00 USD; globex 5 × 0.02 = 0.10 USD; open access 1 × 0
/// - cache: exact 2, semantic 1, miss 5, bypass 1, not logged 1 → hit rate 3 / 8
/// - one fallback (failed_attempts), two shed decisions, one 502
fn seeded() -> Vec<LogRow> {
    let routed = |decision: &str| Some(json!({"decision": decision, "scores": []}));
    let fallback = Some(json!({"decision": "selected", "failed_attempts": [{"model": "big", "error_class": "upstream_5xx"}]}));
    vec![
        row(5, Some("acme"), "big", 0.25, 800.0, Some("miss"), routed("selected"), 200),
        row(65, Some("acme"), "big", 0.25, 900.0, Some("miss"), fallback, 200),
        row(125, Some("acme"), "big", 0.25, 1000.0, Some("exact"), routed("selected"), 200),
        row(185, Some("acme"), "big", 0.25, 1100.0, Some("miss"), routed("explored"), 502),
        row(10, Some("globex"), "small", 0.02, 100.0, Some("semantic"), routed("shed"), 200),
        row(20, Some("globex"), "small", 0.02, 200.0, Some("exact"), routed("shed"), 200),
        row(30, Some("globex"), "small", 0.02, 300.0, Some("miss"), routed("selected"), 200),
        row(40, Some("globex"), "small", 0.02, 400.0, Some("miss"), None, 200),
        row(50, Some("globex"), "small", 0.02, 500.0, Some("bypass"), None, 200),
        row(60, None, "small", 0.0, 600.0, None, None, 200),
        // Outside the 24-hour window.
        row(60 * 30, Some("acme"), "big", 5.0, 5000.0, Some("miss"), fallback_old(), 200),
        row(60 * 48, Some("initech"), "small", 9.0, 5000.0, Some("exact"), None, 200),
    ]
}

fn fallback_old() -> Option<Value> {
    Some(json!({"decision": "shed", "failed_attempts": [{"model": "small"}]}))
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

async fn check_numbers(gw: &Gateway) {
    let summary = gw.json("/dashboard/api/summary?hours=24").await;
    let totals = &summary["totals"];
    assert_eq!(totals["requests"], 10, "{summary}");
    assert!(close(&totals["cost_usd"], 1.10), "{summary}");
    assert!(close(&totals["mean_latency_ms"], 590.0), "{summary}");
    assert_eq!(totals["errors"], 1, "{summary}");
    assert_eq!(totals["fallbacks"], 1, "{summary}");
    assert_eq!(totals["shed"], 2, "{summary}");

    let models: Vec<(String, i64)> = summary["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| (m["model"].as_str().unwrap_or_default().to_owned(), m["requests"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(models, vec![("small".to_owned(), 6), ("big".to_owned(), 4)], "{summary}");

    let tenants = summary["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 3, "{summary}");
    assert_eq!(tenants[0]["tenant"], "acme");
    assert!(close(&tenants[0]["cost_usd"], 1.0), "{summary}");
    assert_eq!(tenants[0]["requests"], 4);
    assert_eq!(tenants[1]["tenant"], "globex");
    assert!(close(&tenants[1]["cost_usd"], 0.10), "{summary}");
    assert_eq!(tenants[2]["tenant"], Value::Null);

    let cache = &summary["cache"];
    assert_eq!(cache["hits"], 3, "{summary}");
    assert_eq!(cache["lookups"], 8, "{summary}");
    assert!(close(&cache["hit_rate"], 3.0 / 8.0), "{summary}");
    let bypass = cache["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|c| c["cache_result"] == "bypass")
        .map(|c| c["requests"].clone());
    assert_eq!(bypass, Some(json!(1)), "{summary}");

    // A 48-hour view sees the 30-hour-old row, not the 48-hour-old one at the edge... and a
    // 72-hour view sees both.
    let wider = gw.json("/dashboard/api/summary?hours=72").await;
    assert_eq!(wider["totals"]["requests"], 12, "{wider}");
    assert_eq!(wider["totals"]["fallbacks"], 2, "{wider}");
    assert_eq!(wider["totals"]["shed"], 3, "{wider}");
    assert!(close(&wider["totals"]["cost_usd"], 15.10), "{wider}");

    let series = gw.json("/dashboard/api/timeseries?hours=24").await;
    assert_eq!(series["bucket_seconds"], 1800, "{series}");
    let rows = series["rows"].as_array().expect("rows");
    let sum = |model: &str, field: &str| -> f64 {
        rows.iter().filter(|r| r["model"] == model).filter_map(|r| r[field].as_f64()).sum()
    };
    assert!((sum("big", "requests") - 4.0).abs() < 1e-9, "{series}");
    assert!((sum("small", "requests") - 6.0).abs() < 1e-9, "{series}");
    assert!((sum("big", "cost_usd") - 1.0).abs() < 1e-9, "{series}");
    // The four big rows are an hour apart: four distinct 30-minute buckets.
    let big_buckets: std::collections::BTreeSet<i64> =
        rows.iter().filter(|r| r["model"] == "big").filter_map(|r| r["t"].as_i64()).collect();
    assert_eq!(big_buckets.len(), 4, "{series}");
    assert!(big_buckets.iter().all(|t| t % 1800 == 0), "{series}");
    let from = series["from"].as_i64().expect("from");
    assert!(big_buckets.iter().all(|t| *t >= from), "{series}");
}

#[tokio::test]
async fn api_numbers_match_the_seeded_sqlite_log() {
    let gw = Gateway::start(None, "", "", &seeded()).await;
    check_numbers(&gw).await;
    let page = gw.get("/dashboard", None).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/html"));
    let html = page.text().await.expect("html");
    // Self-contained: no external script, style sheet or image (the SVG namespace URI is not a load).
    assert!(html.contains("/dashboard/api/"));
    for external in ["<script src", "<link", "src=\"http", "href=\"http", "url(http", "import("] {
        assert!(!html.contains(external), "page loads something from elsewhere: {external}");
    }
    let bad = gw.get("/dashboard/api/summary?hours=0", None).await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["error"]["param"], "hours", "{body}");
}

#[tokio::test]
async fn api_numbers_match_the_seeded_postgres_log() {
    let pg = TestPg::create().await;
    let gw = Gateway::start(Some(&pg.url), "", "", &seeded()).await;
    check_numbers(&gw).await;
}

/// A window is found through the ids (UUIDv7, in arrival order) and trimmed by `created_at`: rows
/// on either side of its start count exactly, and so does a row an earlier build logged, whose
/// `created_at` came a little after its id's time.
async fn check_window_edges(store: &Store) {
    let since = now_micros() - TimeDelta::hours(6);
    let at = |t: chrono::DateTime<chrono::Utc>, model: &str| LogRow { id: v7_id_at(t), created_at: t, model: model.into(), ..minimal_row() };
    let earlier_build = LogRow {
        id: v7_id_at(since - TimeDelta::seconds(20)),
        created_at: since + TimeDelta::milliseconds(5),
        model: "in".into(),
        ..minimal_row()
    };
    let rows = vec![
        at(since, "in"),
        at(since + TimeDelta::milliseconds(1), "in"),
        at(since + TimeDelta::minutes(90), "in"),
        at(since - TimeDelta::microseconds(1), "out"),
        at(since - TimeDelta::seconds(10), "out"),
        at(since - TimeDelta::hours(2), "out"),
        earlier_build,
    ];
    store.insert_rows(&rows).await.expect("insert");
    let models = gateway::dashboard::sql::models(store, since).await.expect("models");
    assert_eq!(models.iter().map(|m| (m.model.as_str(), m.requests)).collect::<Vec<_>>(), vec![("in", 4)], "{models:?}");
    let totals = gateway::dashboard::sql::totals(store, since).await.expect("totals");
    assert_eq!(totals.requests, 4);
    let wider = gateway::dashboard::sql::totals(store, since - TimeDelta::hours(3)).await.expect("totals");
    assert_eq!(wider.requests, 7);
}

#[tokio::test]
async fn windows_keep_their_edges_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("log.db").display()), 2).expect("sqlite url");
    store.migrate().await.expect("migrate");
    check_window_edges(&store).await;
}

#[tokio::test]
async fn windows_keep_their_edges_on_postgres() {
    let pg = TestPg::create().await;
    let store = Store::connect(&pg.url, 2).expect("postgres url");
    store.migrate().await.expect("migrate");
    check_window_edges(&store).await;
}

#[tokio::test]
async fn master_key_guards_the_page_and_the_api() {
    std::env::set_var("SWITCHYARD_DASHBOARD_TEST_KEY", "sk-dash-master");
    let gw = Gateway::start(None, "master_key_env = \"SWITCHYARD_DASHBOARD_TEST_KEY\"", "", &seeded()).await;
    for path in ["/dashboard", "/dashboard/api/summary", "/dashboard/api/timeseries", "/dashboard/api/checkpoints"] {
        assert_eq!(gw.get(path, None).await.status(), 401, "{path} without a key");
        assert_eq!(gw.get(path, Some("sk-wrong")).await.status(), 401, "{path} with a wrong key");
        assert_eq!(gw.get(&format!("{path}?key=sk-wrong"), None).await.status(), 401, "{path} ?key=wrong");
        assert_eq!(gw.get(path, Some("sk-dash-master")).await.status(), 200, "{path} with the master key");
        assert_eq!(gw.get(&format!("{path}?key=sk-dash-master"), None).await.status(), 200, "{path} ?key=master");
    }
    let refused: Value = gw.get("/dashboard/api/summary", None).await.json().await.expect("json");
    assert_eq!(refused["error"]["code"], "invalid_api_key", "{refused}");
}

#[tokio::test]
async fn checkpoints_show_the_shipped_selector_and_its_metrics() {
    let checkpoint = repo().join("models/selector/default");
    let router = format!(
        "checkpoint = \"{}\"\nembedder_dir = \"{}\"",
        checkpoint.display(),
        repo().join(".cache/models/all-MiniLM-L6-v2").display()
    );
    let gw = Gateway::start(None, "", &router, &[]).await;
    let view = gw.json("/dashboard/api/checkpoints").await;
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("selector.json")).expect("selector.json"))
        .expect("json");
    assert_eq!(view["active"]["metrics"], meta["metrics"], "metrics as stored");
    assert!(view["active"]["version"].as_str().is_some_and(|v| v.starts_with("default@")), "{view}");
    assert_eq!(view["shadow"], Value::Null);
    assert_eq!(view["challenger"], Value::Null, "the shipped selector has no challenger beside it");
    assert_eq!(view["challenger_share"], 0.2);
    // An empty log is zeros, not an error.
    let summary = gw.json("/dashboard/api/summary").await;
    assert_eq!(summary["totals"]["requests"], 0, "{summary}");
    assert_eq!(summary["cache"]["hit_rate"], Value::Null, "{summary}");
}

/// Open access lets anyone call `/v1/*`, but once a master key is configured the admin
/// endpoints and the dashboard need it: open access is not admin access.
#[tokio::test]
async fn open_access_with_a_master_key_keeps_admin_closed() {
    std::env::set_var("SWITCHYARD_DASHBOARD_OPEN_KEY", "sk-open-master");
    let gw = Gateway::start(None, "master_key_env = \"SWITCHYARD_DASHBOARD_OPEN_KEY\"\n[auth]\nopen = true", "", &seeded()).await;
    for path in ["/dashboard", "/dashboard/api/summary", "/dashboard/api/checkpoints"] {
        assert_eq!(gw.get(path, None).await.status(), 401, "{path} without a key");
        assert_eq!(gw.get(path, Some("sk-open-master")).await.status(), 200, "{path} with the master key");
    }
    let client = reqwest::Client::new();
    let reload = |key: Option<&'static str>| {
        let mut request = client.post(format!("http://{}/admin/reload", gw.addr));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(reload(None).await.expect("reachable").status(), 401);
    assert_eq!(reload(Some("sk-open-master")).await.expect("reachable").status(), 200);
    // `/v1/*` stays open.
    let models = client.get(format!("http://{}/v1/models", gw.addr)).send().await.expect("reachable");
    assert_eq!(models.status(), 200);
}

#[tokio::test]
async fn checkpoints_view_lists_the_promotion_decisions_newest_first() {
    let dir = tempfile::tempdir().expect("tmp");
    let live = dir.path().join("selector");
    std::fs::create_dir_all(&live).expect("dir");
    for file in ["selector.json", "selector.safetensors"] {
        std::fs::copy(repo().join("models/selector/default").join(file), live.join(file)).expect("copy");
    }
    let record = |promoted: bool, at: &str| {
        serde_json::json!({"decided_at": at, "candidate_checkpoint": "c", "active_checkpoint": "a", "promoted": promoted,
            "reason": "r", "ope": {"rows": 10, "dr_difference": 0.01, "dr_difference_lcb95": -0.01}})
        .to_string()
    };
    std::fs::write(
        dir.path().join("selector.promotions.jsonl"),
        format!("{}\n{}\n", record(true, "2026-12-01T00:00:00Z"), record(false, "2026-12-02T00:00:00Z")),
    )
    .expect("write");
    let router = format!(
        "checkpoint = \"{}\"\nembedder_dir = \"{}\"",
        live.display(),
        repo().join(".cache/models/all-MiniLM-L6-v2").display()
    );
    let gw = Gateway::start(None, "", &router, &[]).await;
    let view = gw.json("/dashboard/api/checkpoints").await;
    let promotions = view["learning"]["promotions"].as_array().expect("promotions");
    assert_eq!(promotions.len(), 2, "{view}");
    assert_eq!(promotions[0]["promoted"], false, "newest first");
    assert_eq!(promotions[1]["decided_at"], "2026-12-01T00:00:00Z");
    assert_eq!(view["learning"]["last_learn"], Value::Null, "learn has not run");
}
