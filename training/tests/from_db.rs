//! Training from simulated logged traffic, off-policy evaluation and promotion.
//!
//! The world: `strong` answers well (0.9) when the first embedding coordinate is positive and
//! badly (0.2) otherwise; `weak` is always 0.6. The active checkpoint wrongly believes `weak`
//! is always better. The gateway logged ε-greedy choices of that checkpoint (ε = 0.5, so the
//! greedy choice has propensity 0.75 and the other 0.25) with feedback drawn from the truth.
//! Training on the log must find the better policy, OPE must say so, and `--promote` must
//! swap it in; a second round against the promoted checkpoint must not promote again.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_model::{Checkpoint, CheckpointMeta, EmbedderRef, RequestFeatures};
use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::SqlitePool;
use training::{Example, Init, TrainConfig, TrainOptions};

const DIM: usize = 16;
const MODELS: [&str; 2] = ["strong", "weak"];

fn true_quality(v: &[f32], model: usize) -> f64 {
    match model {
        0 if v[0] > 0.0 => 0.9,
        0 => 0.2,
        _ => 0.6,
    }
}

fn vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Features of every logged request (no prompt text stored; 12 prompt tokens).
fn logged_features() -> RequestFeatures {
    RequestFeatures { prompt_tokens: 12, turns: 1, has_code: false, has_tools: false, max_tokens: None }
}

/// An active checkpoint that believes `weak` (0.9) always beats `strong` (0.1); seeded, so
/// the whole test is deterministic.
fn write_wrong_checkpoint(dir: &Path) {
    let mut rng = StdRng::seed_from_u64(5);
    let examples: Vec<Example> = (0..200)
        .map(|i| {
            let mut e = Example::empty(vector(&mut rng), logged_features(), 2, format!("w{i}"));
            e.quality = vec![Some(0.1), Some(0.9)];
            e.log_latency_ms = vec![Some(500f32.ln()); 2];
            e.log_output_tokens = vec![Some(100f32.ln()); 2];
            e
        })
        .collect();
    let config = TrainConfig { hidden_dims: vec![16], max_epochs: 30, progress: false, ..TrainConfig::default() };
    let trained = training::train::train(&examples, 2, &config, Init::Random).expect("train wrong checkpoint");
    let meta = CheckpointMeta::new(
        trained.architecture.clone(),
        MODELS.iter().map(|s| s.to_string()).collect(),
        trained.feature_norm.clone(),
        EmbedderRef { id: "test/synthetic".into(), dim: DIM },
        "test:wrong",
    );
    Checkpoint::save(dir, &trained.varmap, &meta).expect("save");
}

async fn create_log(path: &Path, active: &Checkpoint, n: usize) {
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path).create_if_missing(true))
        .await
        .expect("sqlite");
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    let mut files: Vec<_> = std::fs::read_dir(&migrations).expect("migrations").flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files {
        sqlx::raw_sql(&std::fs::read_to_string(&file).expect("sql")).execute(&pool).await.expect("migrate");
    }
    let mut rng = StdRng::seed_from_u64(11);
    let epsilon = 0.5;
    for i in 0..n {
        let v = vector(&mut rng);
        let preds = active.predict(&v, &logged_features()).expect("predict");
        let greedy = if preds[0].quality >= preds[1].quality { 0 } else { 1 };
        let explore = rng.random::<f64>() < epsilon;
        let chosen = if explore { rng.random_range(0..2) } else { greedy };
        let propensity = if chosen == greedy { 1.0 - epsilon + epsilon / 2.0 } else { epsilon / 2.0 };
        let candidates = json!(preds
            .iter()
            .map(|p| json!({"model": p.model_id, "quality": p.quality, "cost_usd": 0.0, "latency_ms": p.latency_ms, "utility": p.quality}))
            .collect::<Vec<_>>());
        let reward = if rng.random::<f64>() < true_quality(&v, chosen) { 1.0 } else { 0.0 };
        let id = uuid_bytes(i);
        let created = format!("2026-01-01T00:{:02}:{:02}.{:03}Z", (i / 60) % 60, i % 60, i % 1000);
        let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let latency = if chosen == 0 { 2000.0 } else { 400.0 };
        sqlx::query(
            "INSERT INTO request_log (id, created_at, route, provider, model, stream, candidates, propensity, checkpoint_version, \
             embedding, prompt_tokens, completion_tokens, cost_usd, latency_ms, status) \
             VALUES (?, ?, 'auto', 'mock', ?, 0, ?, ?, 'active@test', ?, 12, ?, 0.0, ?, 200)",
        )
        .bind(id.to_vec())
        .bind(&created)
        .bind(MODELS[chosen])
        .bind(candidates.to_string())
        .bind(propensity)
        .bind(blob)
        .bind(if chosen == 0 { 300i64 } else { 60 })
        .bind(latency)
        .execute(&pool)
        .await
        .expect("insert");
        sqlx::query("INSERT INTO feedback (request_id, score, source, created_at) VALUES (?, ?, 'test', ?)")
            .bind(id.to_vec())
            .bind(reward)
            .bind(&created)
            .execute(&pool)
            .await
            .expect("feedback");
    }
    pool.close().await;
}

fn uuid_bytes(i: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&(i as u64).to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_from_the_log_evaluates_off_policy_and_promotes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let active_dir = tmp.path().join("active");
    write_wrong_checkpoint(&active_dir);
    let active = Checkpoint::load(&active_dir, "test/synthetic", DIM).expect("load active");
    let db = tmp.path().join("log.db");
    create_log(&db, &active, 3000).await;
    let before = Checkpoint::read_meta(&active_dir).expect("meta").training_data_hash;

    let mut options = TrainOptions::new(tmp.path().join("new"));
    options.from_db = Some(format!("sqlite://{}", db.display()));
    options.active = Some(active_dir.clone());
    options.promote = true;
    options.train = TrainConfig { progress: false, learning_rate: 3e-3, ..TrainConfig::default() };
    let report = training::run(&options).await.expect("train from db");
    println!("{}", report.summary);

    let ope = report.ope.clone().expect("ope");
    assert!(ope.rows > 500, "{} rows", ope.rows);
    // The truth: new ≈ 0.5·0.9 + 0.5·0.6 = 0.75 vs active 0.6.
    assert!(ope.new.doubly_robust > ope.active.doubly_robust + 0.05, "{ope:?}");
    assert!((ope.active.doubly_robust - 0.6).abs() < 0.06, "{ope:?}");
    assert!(ope.dr_difference_lcb95 > 0.01 && ope.better, "{ope:?}");
    let promotion = report.promotion.clone().expect("decision");
    assert!(promotion.promoted);

    // The active directory now holds the new checkpoint, the old one is kept, and the
    // decision is on record.
    let after = Checkpoint::read_meta(&active_dir).expect("meta");
    assert_ne!(after.training_data_hash, before);
    assert!(after.metrics.contains_key("ope"));
    assert!(tmp.path().join("active.previous/selector.json").is_file());
    let log = std::fs::read_to_string(tmp.path().join("active.promotions.jsonl")).expect("decision log");
    assert_eq!(log.lines().count(), 1);
    assert!(log.contains("\"promoted\":true"));
    // The latency head learned from every row: strong is the slow one (2,000 vs 400 ms
    // logged; the head is still converging when early stopping ends on the quality loss).
    let promoted = Checkpoint::load(&active_dir, "test/synthetic", DIM).expect("load promoted");
    let p = promoted.predict(&[0.1; DIM], &logged_features()).expect("predict");
    assert!(p[0].latency_ms > 2.0 * p[1].latency_ms, "{p:?}");

    // Against the promoted checkpoint, a retrain on the same log is no better: kept.
    let mut again = options.clone();
    again.out = tmp.path().join("new2");
    let report = training::run(&again).await.expect("second round");
    let promotion = report.promotion.expect("decision");
    assert!(!promotion.promoted, "{:?}", promotion.ope);
    let log = std::fs::read_to_string(tmp.path().join("active.promotions.jsonl")).expect("decision log");
    assert_eq!(log.lines().count(), 2);
    assert_eq!(Checkpoint::read_meta(&active_dir).expect("meta").training_data_hash, after.training_data_hash);
}
