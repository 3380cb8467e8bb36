//! Learned routing end to end: the real MiniLM embedder, a selector trained here on a task
//! whose right answer is known (code → `coder`, chit-chat → `chatter`), and requests through
//! the running gateway.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use common::start;
use router_model::selector::{input_row, loss};
use router_model::{
    Architecture, BertEmbedder, Checkpoint, CheckpointMeta, Embedder, EmbedderRef, FeatureNorm, LossWeights,
    RequestFeatures, Selector, Targets,
};
use serde_json::{json, Value};

const TRAIN_CODE: &[&str] = &[
    "Write a Python function that reverses a linked list",
    "Fix this Rust borrow checker error in my iterator",
    "How do I implement quicksort in C++?",
    "Write a SQL query joining orders and customers by id",
    "Refactor this JavaScript class to use async/await",
    "Implement a binary search tree insert method in Java",
    "Why does my Go program deadlock on this channel?",
    "Write a bash script that renames all .txt files",
    "Parse JSON in TypeScript with proper type guards",
    "Write a regex that validates IPv4 addresses",
    "Implement LRU cache in Python with O(1) operations",
    "Debug this segfault in my C pointer arithmetic",
    "Write unit tests for a Rust function that parses dates",
    "Convert this recursive Fibonacci function to dynamic programming",
    "How do I read a CSV file with pandas and group by a column?",
    "Write a Dockerfile for a Node.js web server",
];
const TRAIN_CHAT: &[&str] = &[
    "How was your weekend?",
    "Tell me a joke about cats",
    "What is your favourite colour?",
    "I feel a bit tired today, any tips to cheer up?",
    "Recommend a good movie for a rainy evening",
    "What should I cook for dinner tonight?",
    "Say something nice to my friend who just got a new job",
    "Do you like music? What kind?",
    "Write a short birthday message for my grandmother",
    "What are fun things to do in Paris on a sunny day?",
    "Hi there! How are you doing?",
    "Give me a fun fact about penguins",
    "What's a good name for a golden retriever puppy?",
    "Help me plan a relaxing Sunday",
    "Which is better for a picnic, sandwiches or salads?",
    "Tell me a bedtime story about a dragon",
];
const TEST_CODE: &[&str] = &[
    "Write a Python function to merge two sorted arrays",
    "How do I fix a null pointer exception in my Java stream pipeline?",
    "Implement a thread-safe queue in Rust using a mutex",
];
const TEST_CHAT: &[&str] = &[
    "What's a nice gift for my dad who loves gardening?",
    "Tell me something funny about dogs",
    "How do I make my weekend more relaxing?",
];

const CANDIDATES: [&str; 2] = ["coder", "chatter"];

fn embedder() -> &'static BertEmbedder {
    static EMBEDDER: OnceLock<BertEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        BertEmbedder::load_default().expect("embedder weights (run scripts/fetch-model.sh)")
    })
}

/// Trains a selector where `coder` is good at code and `chatter` at chit-chat (or the
/// reverse, with `swapped`), and writes the checkpoint to `dir`.
fn train_checkpoint(dir: &Path, swapped: bool) {
    let embedder = embedder();
    let mut texts: Vec<(&str, bool)> = TRAIN_CODE.iter().map(|t| (*t, true)).collect();
    texts.extend(TRAIN_CHAT.iter().map(|t| (*t, false)));
    let embeddings = embedder
        .embed_batch(&texts.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .expect("embed");
    let features: Vec<RequestFeatures> = texts.iter().map(|(t, _)| RequestFeatures::for_prompt(t)).collect();
    let norm = FeatureNorm::fit(&features.iter().map(RequestFeatures::to_vec).collect::<Vec<_>>());
    let mut rows = Vec::new();
    let mut quality = Vec::new();
    for ((embedding, features), (_, is_code)) in embeddings.iter().zip(&features).zip(&texts) {
        rows.extend(input_row(embedding, features, &norm));
        let (coder, chatter) = if *is_code { (0.95f32, 0.1) } else { (0.3, 0.95) };
        if swapped {
            quality.extend([chatter, coder]);
        } else {
            quality.extend([coder, chatter]);
        }
    }
    let n = texts.len();
    let c = CANDIDATES.len();
    let dev = Device::Cpu;
    let ones = Tensor::ones((n, c), DType::F32, &dev).expect("tensor");
    let difficulty: Vec<f32> = quality.chunks(c).map(|q| q.iter().sum::<f32>() / c as f32).collect();
    let targets = Targets {
        quality: Tensor::from_vec(quality, (n, c), &dev).expect("tensor"),
        quality_mask: ones.clone(),
        log_latency_ms: (ones.clone() * 1000f64.ln()).expect("tensor"),
        latency_mask: ones.clone(),
        log_output_tokens: (ones.clone() * 200f64.ln()).expect("tensor"),
        tokens_mask: ones.clone(),
        difficulty: Tensor::from_vec(difficulty, n, &dev).expect("tensor"),
        difficulty_mask: Tensor::ones(n, DType::F32, &dev).expect("tensor"),
    };
    let input_dim = embedder.dim() + RequestFeatures::LEN;
    let input = Tensor::from_vec(rows, (n, input_dim), &dev).expect("tensor");
    let arch = Architecture {
        hidden_dims: vec![64],
        ..Architecture::new(embedder.dim(), c)
    };
    let varmap = VarMap::new();
    let selector = Selector::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &arch).expect("selector");
    let mut optimizer = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 5e-3, ..ParamsAdamW::default() }).expect("opt");
    for _ in 0..300 {
        let out = selector.forward_t(&input, true).expect("forward");
        let l = loss(&out, &targets, &LossWeights::default()).expect("loss");
        optimizer.backward_step(&l).expect("step");
    }
    let meta = CheckpointMeta::new(
        arch,
        CANDIDATES.iter().map(|s| s.to_string()).collect(),
        norm,
        EmbedderRef { id: embedder.id().to_owned(), dim: embedder.dim() },
        if swapped { "test:swapped" } else { "test:code-vs-chat" },
    );
    Checkpoint::save(dir, &varmap, &meta).expect("save checkpoint");
}

/// Checkpoints trained once per test binary: (normal, swapped).
fn checkpoints() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = tempfile::tempdir().expect("tmp").keep();
        let (normal, swapped) = (root.join("normal"), root.join("swapped"));
        train_checkpoint(&normal, false);
        train_checkpoint(&swapped, true);
        (normal, swapped)
    })
}

fn copy_checkpoint(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for file in ["selector.safetensors", "selector.json"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy");
    }
}

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
