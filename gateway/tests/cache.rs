//! The response cache over HTTP: exact hits as JSON and as replayed streams, scoping by
//! tenant, parameters and conversation, Cache-Control, TTL, persistence across a restart, and
//! semantic hits with the real MiniLM embedder.
//!
//! The mock upstream gives every answer a fresh `id`, so an answer with an id seen before
//! came from the cache, and one with a new id came from the upstream.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway::app::AppState;
use gateway::store::keys::{create_key, NewKey};
use gateway::store::LogStore;
use gateway::{Application, Config};
use serde_json::{json, Value};
use store_support::wait_for;
use tokio::sync::oneshot;
use uuid::Uuid;

struct Gateway {
    addr: SocketAddr,
    state: Arc<AppState>,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), gateway::Error>>>,
}

/// A generous decision deadline: a test machine under parallel load must not shed the
/// embedding (a shed request skips the semantic lookup).
const BASE: &str = r#"
[router]
decision_timeout_ms = 10000

[providers.mock]
kind = "mock"

[models.m]
provider = "mock"

[models.other]
provider = "mock"

[routes.auto]
candidates = ["m", "other"]
default = "m"
exploration = 0
"#;

impl Gateway {
    async fn start(dir: &Path, cache: &str) -> Self {
        let config = Config::from_toml(&format!(
            "[database]\nurl = \"sqlite://{db}\"\nspill_path = \"{spill}\"\nbatch_interval_ms = 10\n\n[cache]\n{cache}\n{BASE}",
            db = dir.join("log.db").display(),
            spill = dir.join("spill.jsonl").display(),
        ))
        .expect("config");
        let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("gateway builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = app.addr();
        let state = app.state();
        let served = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self { addr, state, client: reqwest::Client::new(), stop: Some(stop), served: Some(served) }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.expect("server task").expect("server ran");
        }
    }

    async fn post(&self, body: &Value, key: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.post(format!("http://{}/v1/chat/completions", self.addr)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("gateway answers")
    }

    /// Sends a request and returns (x-switchyard-cache, answer id, body).
    async fn ask(&self, body: &Value, key: Option<&str>, headers: &[(&str, &str)]) -> (String, String, Value) {
        let response = self.post(body, key, headers).await;
        assert_eq!(response.status(), 200);
        let cache = header(&response, "x-switchyard-cache");
        let body: Value = response.json().await.expect("json body");
        (cache, body["id"].as_str().expect("id").to_owned(), body)
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn streamed_text(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter(|p| p.as_str() != "[DONE]")
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn exact_hits_replay_as_json_and_as_stream_and_are_logged() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "exact = true").await;
    let request = chat("m", "Name three prime numbers.");

    let (first, id, body) = gateway.ask(&request, None, &[]).await;
    assert_eq!(first, "miss");
    let response = gateway.post(&request, None, &[]).await;
    assert_eq!(header(&response, "x-switchyard-cache"), "exact");
    assert_eq!(header(&response, "x-switchyard-model"), "m");
    let hit_id = header(&response, "x-switchyard-request-id");
    let replay: Value = response.json().await.expect("json");
    assert_eq!(replay, body, "the stored answer, byte for byte");
    assert_eq!(replay["id"], id);

    // A streaming client gets the JSON answer as chunks with the same text.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let response = gateway.post(&streamed, None, &[]).await;
    assert_eq!(header(&response, "x-switchyard-cache"), "exact");
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let payloads = sse_payloads(&response.text().await.expect("stream"));
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&payloads), body["choices"][0]["message"]["content"].as_str().expect("content"));

    // An answer that arrived as a stream is replayed chunk for chunk, and as JSON.
    let mut streamed_first = chat("m", "Count from one to five.");
    streamed_first["stream"] = json!(true);
    let original = gateway.post(&streamed_first, None, &[]).await;
    assert_eq!(header(&original, "x-switchyard-cache"), "miss");
    let original = sse_payloads(&original.text().await.expect("stream"));
    let replayed = gateway.post(&streamed_first, None, &[]).await;
    assert_eq!(header(&replayed, "x-switchyard-cache"), "exact");
    let replayed = sse_payloads(&replayed.text().await.expect("stream"));
    assert_eq!(replayed, original, "same chunks, same split");
    let (kind, _, as_json) = gateway.ask(&chat("m", "Count from one to five."), None, &[]).await;
    assert_eq!(kind, "exact");
    assert_eq!(as_json["choices"][0]["message"]["content"].as_str(), Some(streamed_text(&original).as_str()));

    // The hit is in the outcome log as a hit, with no upstream cost.
    let hit_id = Uuid::parse_str(&hit_id).expect("request id");
    let store = gateway.state.store.clone();
    assert!(
        wait_for(Duration::from_secs(5), async || matches!(store.fetch_row(hit_id).await, Ok(Some(_)))).await,
        "hit row written"
    );
    let row = store.fetch_row(hit_id).await.expect("read").expect("row");
    assert_eq!(row.cache_result.as_deref(), Some("exact"));
    assert_eq!(row.provider, "cache");
    assert_eq!(row.cost_usd, Some(0.0));
    assert_eq!(row.status, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn tenants_parameters_and_history_scope_exact_hits() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "exact = true").await;
    let store = gateway.state.store.clone();
    let (_, acme) = create_key(&store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");
    let (_, globex) = create_key(&store, NewKey { tenant: "globex".into(), ..NewKey::default() }).await.expect("key");
    let request = chat("m", "Summarise the plot of Hamlet in one line.");

    let (_, acme_id, _) = gateway.ask(&request, Some(&acme), &[]).await;
    let (kind, id, _) = gateway.ask(&request, Some(&globex), &[]).await;
    assert_eq!(kind, "miss", "another tenant never sees acme's answer");
    assert_ne!(id, acme_id);
    let (kind, _, _) = gateway.ask(&request, None, &[]).await;
    assert_eq!(kind, "miss", "nor does anonymous access");
    let (kind, id, _) = gateway.ask(&request, Some(&acme), &[]).await;
    assert_eq!((kind.as_str(), id.as_str()), ("exact", acme_id.as_str()));

    // Any answer-changing parameter is a different question.
    for (field, value) in [("temperature", json!(0.2)), ("max_tokens", json!(5)), ("seed", json!(3)),
        ("tools", json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]))] {
        let mut changed = request.clone();
        changed[field] = value;
        let (kind, _, _) = gateway.ask(&changed, Some(&acme), &[]).await;
        assert_eq!(kind, "miss", "{field} changes the answer");
    }
    // Same last message, different conversation before it.
    let with_history = |history: &str| {
        json!({"model": "m", "temperature": 0, "messages": [
            {"role": "user", "content": history}, {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Summarise the plot of Hamlet in one line."}]})
    };
    gateway.ask(&with_history("We are talking about Shakespeare."), Some(&acme), &[]).await;
    let (kind, _, _) = gateway.ask(&with_history("Answer as a pirate would."), Some(&acme), &[]).await;
    assert_eq!(kind, "miss");
    // Delivery-only fields do not matter.
    let mut with_user = request.clone();
    with_user["user"] = json!("end-user-42");
    assert_eq!(gateway.ask(&with_user, Some(&acme), &[]).await.0, "exact");
    gateway.stop().await;
}

#[tokio::test]
async fn cache_control_and_temperature_decide_what_is_cached() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "exact = true\nmax_temperature = 0.5").await;
    let request = chat("m", "What is the boiling point of water at sea level?");
    let (kind, _, _) = gateway.ask(&request, None, &[("cache-control", "no-store")]).await;
    assert_eq!(kind, "bypass");
    assert_eq!(gateway.ask(&request, None, &[]).await.0, "miss", "no-store kept nothing");
    let (kind, fresh_id, _) = gateway.ask(&request, None, &[("cache-control", "no-cache")]).await;
    assert_eq!(kind, "bypass", "no-cache fetches a fresh answer");
    let (kind, id, _) = gateway.ask(&request, None, &[]).await;
    assert_eq!((kind.as_str(), id.as_str()), ("exact", fresh_id.as_str()), "and stores it");

    let hot = json!({"model": "m", "temperature": 0.9, "messages": [{"role": "user", "content": "Write a haiku."}]});
    gateway.ask(&hot, None, &[]).await;
    assert_eq!(gateway.ask(&hot, None, &[]).await.0, "bypass", "high temperature asks for variety");
    gateway.stop().await;
}

#[tokio::test]
async fn a_restart_is_warm_and_expired_entries_are_never_served() {
    let dir = tempfile::tempdir().expect("dir");
    let request = chat("m", "Which planet is the largest?");
    let first = Gateway::start(dir.path(), "exact = true\nttl_secs = 3").await;
    let (_, id, _) = first.ask(&request, None, &[]).await;
    let store = first.state.store.clone();
    let persisted = wait_for(Duration::from_secs(5), async || {
        store.load_cache_entries(cache::now_ms(), 0).await.is_ok_and(|entries| !entries.is_empty())
    })
    .await;
    assert!(persisted, "entry reached the database");
    first.stop().await;

    let second = Gateway::start(dir.path(), "exact = true\nttl_secs = 3").await;
    let (kind, replay_id, _) = second.ask(&request, None, &[]).await;
    assert_eq!((kind.as_str(), replay_id.as_str()), ("exact", id.as_str()), "served from the restored cache");
    second.stop().await;

    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let third = Gateway::start(dir.path(), "exact = true\nttl_secs = 3").await;
    let (kind, fresh_id, _) = third.ask(&request, None, &[]).await;
    assert_eq!(kind, "miss", "expired entries are not restored");
    assert_ne!(fresh_id, id);
    third.stop().await;
}

/// Semantic hits with the real embedder, cosine only (no verifier): scoping must hold even
/// when the similarity threshold alone decides.
#[tokio::test]
async fn semantic_hits_stay_within_tenant_route_and_conversation() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "semantic = true\nrequire_verifier = false\nmin_cosine = 0.9").await;
    let store = gateway.state.store.clone();
    let (_, acme) = create_key(&store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");
    let (_, globex) = create_key(&store, NewKey { tenant: "globex".into(), ..NewKey::default() }).await.expect("key");

    let (kind, id, _) = gateway.ask(&chat("auto", "What is the capital city of France?"), Some(&acme), &[]).await;
    assert_eq!(kind, "miss");
    let response = gateway.post(&chat("auto", "what is the capital city of france"), Some(&acme), &[]).await;
    assert_eq!(header(&response, "x-switchyard-cache"), "semantic");
    let similarity: f32 = header(&response, "x-switchyard-cache-similarity").parse().expect("similarity header");
    assert!(similarity >= 0.9);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"].as_str(), Some(id.as_str()));

    let other_tenant = gateway.ask(&chat("auto", "what is the capital city of france"), Some(&globex), &[]).await;
    assert_eq!(other_tenant.0, "miss", "semantic scope includes the tenant");
    let unrelated = gateway.ask(&chat("auto", "How do I bake sourdough bread?"), Some(&acme), &[]).await;
    assert_eq!(unrelated.0, "miss");
    let other_history = json!({"model": "auto", "temperature": 0, "messages": [
        {"role": "system", "content": "Answer in German."},
        {"role": "user", "content": "what is the capital city of france"}]});
    assert_eq!(gateway.ask(&other_history, Some(&acme), &[]).await.0, "miss", "conversation is part of the scope");
    let mut other_params = chat("auto", "what is the capital city of france");
    other_params["max_tokens"] = json!(3);
    assert_eq!(gateway.ask(&other_params, Some(&acme), &[]).await.0, "miss", "parameters are part of the scope");
    gateway.stop().await;
}

/// A conversation whose context is the same and whose last question is paraphrased is served
/// from the semantic tier; another system prompt or other tool definitions never are, however
/// close the question.
#[tokio::test]
async fn semantic_hits_for_a_paraphrased_last_turn_never_across_system_prompts_or_tools() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "semantic = true\nrequire_verifier = false\nmin_cosine = 0.9").await;
    let conversation = |system: &str, last: &str, tools: Option<Value>| {
        let mut body = json!({"model": "auto", "temperature": 0, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "I am planning a trip to Europe next spring."},
            {"role": "assistant", "content": "Lovely. Which countries are you thinking of?"},
            {"role": "user", "content": last}]});
        if let Some(tools) = tools {
            body["tools"] = tools;
        }
        body
    };
    let weather = |name: &str| json!([{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}]);
    let (first, id, _) = gateway.ask(&conversation("You are a travel agent.", "What is the capital city of France?", None), None, &[]).await;
    assert_eq!(first, "miss");
    let (kind, hit_id, _) = gateway.ask(&conversation("You are a travel agent.", "what is the capital city of france", None), None, &[]).await;
    assert_eq!((kind.as_str(), hit_id.as_str()), ("semantic", id.as_str()), "same context, paraphrased last turn");

    let other_system = conversation("You are a pirate. Answer as one.", "what is the capital city of france", None);
    assert_eq!(gateway.ask(&other_system, None, &[]).await.0, "miss", "another system prompt");

    let (with_tools, tools_id, _) = gateway.ask(&conversation("You are a travel agent.", "What is the capital city of France?", Some(weather("get_weather"))), None, &[]).await;
    assert_eq!(with_tools, "miss", "tools are part of the scope");
    let same_tools = conversation("You are a travel agent.", "what is the capital city of france", Some(weather("get_weather")));
    let (kind, hit_id, _) = gateway.ask(&same_tools, None, &[]).await;
    assert_eq!((kind.as_str(), hit_id.as_str()), ("semantic", tools_id.as_str()), "same tools, paraphrased last turn");
    let other_tools = conversation("You are a travel agent.", "what is the capital city of france", Some(weather("get_forecast")));
    assert_eq!(gateway.ask(&other_tools, None, &[]).await.0, "miss", "other tool definitions");
    gateway.stop().await;
}

/// Without a verifier checkpoint, the default refuses semantic hits (cosine alone serves
/// wrong answers), and a verifier path that does not exist is an error at start.
#[tokio::test]
async fn semantic_tier_needs_a_verifier_by_default() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "exact = true\nsemantic = true").await;
    gateway.ask(&chat("auto", "What is the capital city of France?"), None, &[]).await;
    let (kind, _, _) = gateway.ask(&chat("auto", "what is the capital city of france"), None, &[]).await;
    assert_eq!(kind, "miss");
    gateway.stop().await;

    let config = Config::from_toml(&format!(
        "[database]\nurl = \"sqlite::memory:\"\n[cache]\nsemantic = true\nverifier = \"{}\"\n{BASE}",
        dir.path().join("no-such-verifier").display()
    ))
    .expect("config parses");
    let built = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await;
    assert!(matches!(built, Err(gateway::Error::Config(message)) if message.contains("verifier")));
}

/// Two replicas sharing the real Redis at 127.0.0.1:6379: one replica's answer is an exact
/// hit on the other (no database persistence, so only Redis can carry it).
#[tokio::test]
async fn exact_hits_are_shared_across_replicas_through_redis() {
    let prefix = format!("switchyard-test-{}", Uuid::now_v7().simple());
    let settings = format!("exact = true\npersist = false\nttl_secs = 60\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\nredis_timeout_ms = 500");
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let a = Gateway::start(dir_a.path(), &settings).await;
    let b = Gateway::start(dir_b.path(), &settings).await;
    let request = chat("m", "What is the tallest mountain on Earth?");
    let (kind, id, _) = a.ask(&request, None, &[]).await;
    assert_eq!(kind, "miss");
    // The write to Redis is off the request path: wait (bounded) until the key is there.
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("Redis at 127.0.0.1:6379");
    let mut stored = false;
    for _ in 0..100 {
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:cache:*")).query_async(&mut conn).await.expect("KEYS");
        if !keys.is_empty() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored, "answer reached Redis");
    let (kind, replay_id, _) = b.ask(&request, None, &[]).await;
    assert_eq!((kind.as_str(), replay_id.as_str()), ("exact", id.as_str()), "replica B serves replica A's answer");
    let mut other = request.clone();
    other["seed"] = json!(1);
    assert_eq!(b.ask(&other, None, &[]).await.0, "miss");
    a.stop().await;
    b.stop().await;
}

/// The shipped verifier on the request path: every pair of the minimal-edit fixture is
/// asked through the gateway (first text stored, second text asked, each pair in a scope of
/// its own). Answer-changing edits must never be served from the cache; a fair share of the
/// paraphrases must be.
#[tokio::test]
async fn minimal_edits_never_hit_through_the_gateway_and_paraphrases_do() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let verifier = repo.join("models/verifier/default");
    let fixture = std::fs::read_to_string(repo.join("cache/tests/fixtures/minimal_edits.jsonl")).expect("fixture");
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), &format!("semantic = true\nverifier = \"{}\"", verifier.display())).await;
    let (mut wrong, mut paraphrases, mut paraphrase_hits) = (Vec::new(), 0, 0);
    for (i, line) in fixture.lines().enumerate() {
        let pair: Value = serde_json::from_str(line).expect("fixture line");
        let ask = |text: &str| {
            json!({"model": "auto", "temperature": 0, "messages": [
                {"role": "system", "content": format!("pair {i}")},
                {"role": "user", "content": text}]})
        };
        let text_a = pair["text_a"].as_str().expect("text_a");
        let text_b = pair["text_b"].as_str().expect("text_b");
        assert_eq!(gateway.ask(&ask(text_a), None, &[]).await.0, "miss");
        let (kind, _, _) = gateway.ask(&ask(text_b), None, &[]).await;
        match pair["label"].as_u64() {
            Some(0) if kind != "miss" => wrong.push(format!("{text_a} | {text_b} ({kind})")),
            Some(1) => {
                paraphrases += 1;
                paraphrase_hits += usize::from(kind == "semantic");
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "answers served for different questions: {wrong:#?}");
    let share = paraphrase_hits as f64 / paraphrases as f64;
    eprintln!("paraphrases served from the cache: {paraphrase_hits}/{paraphrases}");
    assert!(share >= 0.6, "only {paraphrase_hits}/{paraphrases} paraphrases hit");
    gateway.stop().await;
}

/// A malformed `x-switchyard-*` header is the same 400 whether or not the cache holds the
/// answer, and the refusal is logged like any other.
#[tokio::test]
async fn client_headers_are_checked_before_the_cache() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), "exact = true").await;
    let routed = chat("auto", "Which river is the longest?");
    let direct = chat("m", "Name a prime number.");
    for body in [&routed, &direct] {
        gateway.ask(body, None, &[]).await;
        let (cache, _, _) = gateway.ask(body, None, &[]).await;
        assert_eq!(cache, "exact", "the answer is cached now");
    }
    let bad = [
        (&routed, "x-switchyard-tradeoff", "quality=lots"),
        (&routed, "x-switchyard-max-cost-usd", "-1"),
        (&routed, "x-switchyard-timeout-ms", "soon"),
        (&direct, "x-switchyard-timeout-ms", "0"),
    ];
    for (body, name, value) in bad {
        let response = gateway.post(body, None, &[(name, value)]).await;
        assert_eq!(response.status(), 400, "{name}: {value} on a cached request");
        let error: Value = response.json().await.expect("error body");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["param"], name);
    }
    gateway.state.log.flush().await.expect("flush");
    let rows = gateway.state.store.count_rows().await.expect("count");
    assert_eq!(rows, 4 + bad.len() as i64, "two requests and one hit per body, and every refusal");
    gateway.stop().await;
}

/// A question whose paraphrases (it plus one of the endings) get the mock's same answer.
const BOUNDED_QUESTION: &str = "What is the capital city of France? Answer in a few words";
const BOUNDED_ENDINGS: [&str; 24] = [
    ".", ", please.", ", thanks.", " please.", " if you can.", ", thank you.", " only.", ", nothing more.", " at most.",
    " or less.", ", kindly.", " for me.", " today.", ", briefly.", " and quickly.", ", okay?", " - thanks!", " please!",
    ", short.", " only, please.", ", nothing else.", " max.", " (short).", " thanks!",
];
const BOUNDED: &str = "semantic = true\nrequire_verifier = false\nmin_cosine = 0.85\nsemantic_direct_models = true\nmax_wrong_hit_rate = 0.2\naudit_share = 0";

/// Under a wrong-hit bound the cache serves no semantic hit until audits show the bound: each
/// candidate goes upstream and the fresh answer is compared with the cached one. Once enough
/// agree, candidates are served; a client's "wrong" on a served hit takes that back. (The
/// mock's answer quotes the question's first 48 characters, so these paraphrases, which differ
/// only after them, get the same answer.)
#[tokio::test]
async fn a_wrong_hit_bound_audits_until_the_evidence_keeps_it_and_feedback_takes_it_back() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), BOUNDED).await;
    let question = BOUNDED_QUESTION;
    let endings = BOUNDED_ENDINGS;
    assert_eq!(gateway.ask(&chat("m", question), None, &[]).await.0, "miss");
    let calibration = || gateway.state.cache.as_ref().expect("cache on").calibration();
    assert!(calibration().is_empty(), "no candidate yet");

    // Learning: every candidate is audited (answered upstream, logged as `audit`), never served.
    let mut audits = 0;
    let mut served = None;
    for (i, ending) in endings.iter().enumerate() {
        let text = format!("{question}{ending}");
        if i == 3 {
            // A streamed audit is compared when its stream ends.
            let mut body = chat("m", &text);
            body["stream"] = json!(true);
            let response = gateway.post(&body, None, &[]).await;
            assert_eq!(header(&response, "x-switchyard-cache"), "audit");
            assert!(streamed_text(&sse_payloads(&response.text().await.expect("stream"))).contains("capital city"));
            audits += 1;
            continue;
        }
        let response = gateway.post(&chat("m", &text), None, &[]).await;
        let (kind, id) = (header(&response, "x-switchyard-cache"), header(&response, "x-switchyard-request-id"));
        match kind.as_str() {
            "audit" => audits += 1,
            "semantic" => {
                served = Some(id);
                break;
            }
            other => panic!("{text}: {other}"),
        }
    }
    let served = served.unwrap_or_else(|| panic!("never served after {audits} agreeing audits: {:?}", calibration()));
    // With no wrong answer, the Wilson 95% bound reaches 0.2 at 11 observations.
    assert!(audits >= 11, "served after only {audits} audits");
    assert!(wait_for(Duration::from_secs(5), async || calibration()[0].audits >= 11).await, "{:?}", calibration());
    let status = &calibration()[0];
    assert_eq!((status.scope.as_str(), status.wrong), ("all", 0), "{status:?}");
    assert!(status.threshold.is_some() && status.wrong_rate_upper95.is_some_and(|u| u <= 0.2), "{status:?}");
    eprintln!("served after {audits} audits: {status:?}");
    // The dashboard shows the bound and its evidence; audits count as cache lookups.
    let summary: Value = gateway
        .client
        .get(format!("http://{}/dashboard/api/summary", gateway.addr))
        .send()
        .await
        .expect("summary")
        .json()
        .await
        .expect("summary JSON");
    assert_eq!(summary["cache"]["calibration"][0]["scope"], "all", "{summary:#}");
    assert_eq!(summary["cache"]["calibration"][0]["max_wrong_hit_rate"], 0.2);

    // The client says the served hit was wrong: the evidence no longer keeps the bound.
    let feedback = || async {
        gateway
            .client
            .post(format!("http://{}/v1/feedback", gateway.addr))
            .json(&json!({"request_id": served, "score": 0.0}))
            .send()
            .await
            .expect("feedback answered")
            .status()
    };
    let mut status_code = feedback().await;
    for _ in 0..50 {
        if status_code.is_success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the row is still being written
        status_code = feedback().await;
    }
    assert!(status_code.is_success(), "{status_code}");
    let status = &calibration()[0];
    assert_eq!((status.wrong, status.feedback, status.threshold), (1, 1, None), "{status:?}");
    let (kind, _, _) = gateway.ask(&chat("m", &format!("{question}{}", endings[endings.len() - 1])), None, &[]).await;
    assert_eq!(kind, "audit", "learning again");
    gateway.stop().await;
}

/// Answers in other words: the mock's answer quotes the question's first 48 characters, so
/// these paraphrases (which differ there) get answers whose words differ. Compared by words,
/// every audit says "wrong" and the bound never opens; with `audit_judge` (the mock plays the
/// judge: SAME when both answers come from the same model) the audits agree and hits are
/// served.
#[tokio::test]
async fn an_audit_judge_recognises_the_same_answer_in_other_words() {
    let questions = [
        "What is the capital city of France? A few words.",
        "Which city is the capital of France? A few words.",
        "Tell me the capital city of France, in a few words.",
        "France's capital city is which one? A few words.",
        "Name the capital city of France in a few words.",
        "What city is France's capital? Just a few words.",
        "In a few words: what is the capital of France?",
        "Could you tell me France's capital city, briefly?",
        "What's the capital of France? Keep it to a few words.",
        "Which is the capital city of France? Briefly please.",
        "Capital city of France? Answer in a few words.",
        "Do you know the capital city of France? A few words.",
        "What is France's capital city? Answer in few words.",
        "The capital city of France is what? A few words.",
        "Please name France's capital city in a few words.",
        "What is the French capital city? In a few words.",
        "Which city serves as the capital of France? Briefly.",
        "Say the capital city of France in a few words.",
    ];
    for judged in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let judge = if judged { "\naudit_judge = \"other\"" } else { "" };
        let settings = format!(
            "semantic = true\nrequire_verifier = false\nmin_cosine = 0.6\nsemantic_direct_models = true\nmax_wrong_hit_rate = 0.2\naudit_share = 0{judge}"
        );
        let gateway = Gateway::start(dir.path(), &settings).await;
        let calibration = || gateway.state.cache.as_ref().expect("cache on").calibration();
        assert_eq!(gateway.ask(&chat("m", questions[0]), None, &[]).await.0, "miss");
        let (mut audits, mut served) = (0usize, false);
        for question in &questions[1..] {
            match gateway.ask(&chat("m", question), None, &[]).await.0.as_str() {
                "audit" => audits += 1,
                "semantic" => {
                    served = true;
                    break;
                }
                // No neighbour above the loose cosine: a plain miss, no evidence.
                _ => continue,
            }
            // The judge answers off the request path: let its verdict land before the next.
            let recorded = wait_for(Duration::from_secs(5), async || calibration().first().is_some_and(|s| s.audits as usize >= audits)).await;
            assert!(recorded, "audit {audits} not recorded: {:?}", calibration());
        }
        let status = calibration().first().cloned().expect("a bounded scope");
        eprintln!("audit_judge {judged}: served {served} after {audits} audits: {status:?}");
        if judged {
            assert!(served, "the judge's SAME verdicts should open the bound: {status:?}");
            assert_eq!(status.wrong, 0, "{status:?}");
        } else {
            assert!(!served, "{status:?}");
            assert!(audits >= 11 && status.wrong >= 11, "different words count as wrong answers: {status:?}");
        }
        gateway.stop().await;
    }
}

/// The evidence behind a bound is kept in the database: a restarted gateway serves at once
/// where the last one had learnt it may.
#[tokio::test]
async fn a_restarted_gateway_keeps_what_its_audits_showed() {
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(dir.path(), BOUNDED).await;
    assert_eq!(gateway.ask(&chat("m", BOUNDED_QUESTION), None, &[]).await.0, "miss");
    for (audits, ending) in BOUNDED_ENDINGS[..11].iter().enumerate() {
        let (kind, _, _) = gateway.ask(&chat("m", &format!("{BOUNDED_QUESTION}{ending}")), None, &[]).await;
        assert_eq!(kind, "audit", "still learning after {audits} audits");
    }
    let learnt = gateway.state.cache.as_ref().expect("cache on").calibration();
    assert!(learnt[0].threshold.is_some(), "{learnt:?}");
    gateway.stop().await;

    let restarted = Gateway::start(dir.path(), BOUNDED).await;
    let restored = restarted.state.cache.as_ref().expect("cache on").calibration();
    assert_eq!((restored[0].observations, restored[0].audits, restored[0].wrong), (11, 11, 0), "{restored:?}");
    let (kind, _, _) = restarted.ask(&chat("m", &format!("{BOUNDED_QUESTION}{}", BOUNDED_ENDINGS[20])), None, &[]).await;
    assert_eq!(kind, "semantic", "{:?}", restarted.state.cache.as_ref().expect("cache on").calibration());
    restarted.stop().await;
}
