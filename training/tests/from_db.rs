//! Training from simulated logged traffic, off-policy evaluation and promotion.
//!
//! The world: `strong` answers well (0.9) when the first embedding coordinate is positive and
//! badly (0.2) otherwise; `weak` is always 0.6. The active checkpoint wrongly believes `weak`
//! is always better. The gateway logged ε-greedy choices of that checkpoint (ε = 0.5, so the
//! greedy choice has propensity 0.75 and the other 0.25) with feedback drawn from the truth.
//! Training on the log must find the better policy, OPE must say so, and `--promote` must
//! swap it in; a second round against the promoted checkpoint must not promote again.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_model::{Checkpoint, CheckpointMeta, EmbedderRef, RequestFeatures};
use sqlx::any::AnyPoolOptions;
use sqlx::{Connection, Executor, PgConnection};
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

/// Where a simulated log is written: the two backends the gateway logs to.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Applies the gateway's migrations for `backend`, then writes `n` logged requests and their
/// feedback, drawn with a fixed seed (so both backends get the same log).
async fn create_log(url: &str, backend: Backend, active: &Checkpoint, n: usize) {
    append_log(url, backend, active, 0..n, "2026-01-01", true).await;
}

/// Writes logged requests `ids` on `date` (migrating first when `migrate`), drawn with a
/// seed of the first id.
async fn append_log(url: &str, backend: Backend, active: &Checkpoint, ids: std::ops::Range<usize>, date: &str, migrate: bool) {
    let seed = ids.start;
    append_log_drawn_as(url, backend, active, ids, date, migrate, seed).await;
}

/// [`append_log`] with the prompts, choices and ratings drawn as the rows from `seed_id` on
/// were: `seed_id` 0 repeats [`create_log`]'s prompts under new ids.
async fn append_log_drawn_as(url: &str, backend: Backend, active: &Checkpoint, ids: std::ops::Range<usize>, date: &str, migrate: bool, seed_id: usize) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new().max_connections(1).connect(url).await.expect("connect to the log database");
    let dir = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&migrations).expect("migrations").flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files.iter().filter(|_| migrate) {
        sqlx::raw_sql(&std::fs::read_to_string(file).expect("sql")).execute(&pool).await.expect("migrate");
    }
    let (insert_request, insert_feedback) = match backend {
        Backend::Sqlite => (
            "INSERT INTO request_log (id, created_at, route, provider, model, stream, candidates, propensity, checkpoint_version, \
             embedding, prompt_tokens, completion_tokens, cost_usd, latency_ms, status) \
             VALUES (unhex(?), ?, 'auto', 'mock', ?, 0, ?, ?, 'active@test', ?, 12, ?, 0.0, ?, 200)",
            "INSERT INTO feedback (request_id, score, source, created_at) VALUES (unhex(?), ?, 'test', ?)",
        ),
        Backend::Postgres => (
            "INSERT INTO request_log (id, created_at, route, provider, model, stream, candidates, propensity, checkpoint_version, \
             embedding, prompt_tokens, completion_tokens, cost_usd, latency_ms, status) \
             VALUES ($1::uuid, $2::timestamptz, 'auto', 'mock', $3, false, $4::jsonb, $5, 'active@test', $6, 12, $7, 0.0, $8, 200)",
            "INSERT INTO feedback (request_id, score, source, created_at) VALUES ($1::uuid, $2, 'test', $3::timestamptz)",
        ),
    };
    let mut rng = StdRng::seed_from_u64(11 + seed_id as u64);
    let epsilon = 0.5;
    for i in ids {
        let v = vector(&mut rng);
        let preds = active.predict(&v, &logged_features()).expect("predict");
        let greedy = if preds[0].quality >= preds[1].quality { 0 } else { 1 };
        let explore = rng.random::<f64>() < epsilon;
        let chosen = if explore { rng.random_range(0..2) } else { greedy };
        let propensity = if chosen == greedy { 1.0 - epsilon + epsilon / 2.0 } else { epsilon / 2.0 };
        let candidates = serde_json::to_value(router_model::outcome::DecisionRecord {
            decision: Some(if chosen == greedy { "selected" } else { "explored" }.into()),
            tradeoff: Some("quality=1,cost=0,latency=0".into()),
            decision_ms: Some(1.0),
            scores: preds
                .iter()
                .enumerate()
                .map(|(j, p)| router_model::outcome::ScoredCandidate {
                    model: p.model_id.clone(),
                    quality: f64::from(p.quality),
                    cost_usd: 0.0,
                    latency_ms: f64::from(p.latency_ms),
                    utility: f64::from(p.quality),
                    probability: if j == greedy { 1.0 - epsilon / 2.0 } else { epsilon / 2.0 },
                    input_usd_per_mtok: 0.0,
                    output_usd_per_mtok: 0.0,
                })
                .collect(),
            ..Default::default()
        })
        .expect("decision json");
        let reward = if rng.random::<f64>() < true_quality(&v, chosen) { 1.0 } else { 0.0 };
        let id = request_id(i, backend);
        let created = format!("{date}T{:02}:{:02}:{:02}.{:03}Z", (i / 3600) % 24, (i / 60) % 60, i % 60, i % 1000);
        let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let latency = if chosen == 0 { 2000.0 } else { 400.0 };
        sqlx::query(insert_request)
            .bind(id.clone())
            .bind(created.clone())
            .bind(MODELS[chosen])
            .bind(candidates.to_string())
            .bind(propensity)
            .bind(blob)
            .bind(if chosen == 0 { 300i64 } else { 60 })
            .bind(latency)
            .execute(&pool)
            .await
            .expect("insert");
        sqlx::query(insert_feedback).bind(id).bind(reward).bind(created).execute(&pool).await.expect("feedback");
    }
    pool.close().await;
}

/// The `i`-th request id as each backend's SQL takes it: hex for SQLite's `unhex`, the UUID
/// text form for Postgres.
fn request_id(i: usize, backend: Backend) -> String {
    let hex = format!("{:032x}", i as u128);
    match backend {
        Backend::Sqlite => hex,
        Backend::Postgres => format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]),
    }
}

/// A uniquely named Postgres database on the test server (`SWITCHYARD_TEST_PG` overrides
/// `postgres://postgres@127.0.0.1:5432`), dropped at the end.
struct TestPg {
    server: String,
    name: String,
}

impl TestPg {
    async fn create() -> Self {
        let server = std::env::var("SWITCHYARD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let name = format!("switchyard_train_{}_{}", std::process::id(), rand::random::<u32>());
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("Postgres at 127.0.0.1:5432 (start it: pg_ctlcluster --skip-systemctl-redirect 15 main start)");
        admin.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await.expect("create database");
        let _ = admin.close().await;
        Self { server, name }
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    async fn drop_database(self) {
        if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", self.server)).await {
            let _ = admin.execute(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str()).await;
            let _ = admin.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_from_the_log_evaluates_off_policy_and_promotes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let active_dir = tmp.path().join("active");
    write_wrong_checkpoint(&active_dir);
    let active = Checkpoint::load(&active_dir, "test/synthetic", DIM).expect("load active");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    create_log(&db, Backend::Sqlite, &active, 3000).await;
    let before = Checkpoint::read_meta(&active_dir).expect("meta").training_data_hash;

    let mut options = TrainOptions::new(tmp.path().join("new"));
    options.from_db = Some(db);
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

/// The same simulated log written to Postgres reads back row for row as from SQLite, and
/// training from it reaches the same decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_from_a_postgres_log_as_from_sqlite() {
    let tmp = tempfile::tempdir().expect("tmp");
    let active_dir = tmp.path().join("active");
    write_wrong_checkpoint(&active_dir);
    let active = Checkpoint::load(&active_dir, "test/synthetic", DIM).expect("load active");
    let sqlite = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    create_log(&sqlite, Backend::Sqlite, &active, 3000).await;
    let pg = TestPg::create().await;
    create_log(&pg.url(), Backend::Postgres, &active, 3000).await;

    let from_sqlite = training::db::load_logged(&sqlite, None).await.expect("read SQLite log");
    let from_pg = training::db::load_logged(&pg.url(), None).await.expect("read Postgres log");
    assert_eq!(from_pg.len(), 3000);
    assert_eq!(from_sqlite.len(), from_pg.len());
    // Both backends decode into the same typed row: ids, times and the rest agree exactly.
    for (s, p) in from_sqlite.iter().zip(&from_pg) {
        assert_eq!(s, p);
    }
    // Feedback joined: every row carries its 0/1 reward.
    assert!(from_pg.iter().all(|r| matches!(r.feedback, Some(f) if f == 0.0 || f == 1.0)));

    let mut options = TrainOptions::new(tmp.path().join("from-pg"));
    options.from_db = Some(pg.url());
    options.active = Some(active_dir.clone());
    options.train = TrainConfig { progress: false, learning_rate: 3e-3, ..TrainConfig::default() };
    let report = training::run(&options).await.expect("train from Postgres");
    let ope = report.ope.expect("ope");
    assert!(ope.rows > 500, "{} rows", ope.rows);
    assert!(ope.new.doubly_robust > ope.active.doubly_robust + 0.05, "{ope:?}");
    assert!(ope.better, "{ope:?}");
    assert!(tmp.path().join("from-pg/selector.json").is_file());
    pg.drop_database().await;
}

/// A wrong active checkpoint, an empty SQLite log beside it and `switchyard learn`'s options
/// for them.
struct LearnFixture {
    tmp: tempfile::TempDir,
    active_dir: PathBuf,
    active: Checkpoint,
    db: String,
    options: training::learn::LearnOptions,
}

fn learn_fixture() -> LearnFixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let active_dir = tmp.path().join("active");
    write_wrong_checkpoint(&active_dir);
    let active = Checkpoint::load(&active_dir, "test/synthetic", DIM).expect("load active");
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    let mut options = training::learn::LearnOptions::new(db.clone(), active_dir.clone());
    options.train = TrainConfig { progress: false, learning_rate: 3e-3, ..TrainConfig::default() };
    LearnFixture { tmp, active_dir, active, db, options }
}

/// `switchyard learn` with challengers (the default): the better candidate is not promoted on
/// the held-out rows but installed as the challenger; traffic logged after it was trained
/// judges it — too little of it and it waits — and it is promoted then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_becomes_the_challenger_and_is_promoted_on_traffic_logged_after_it() {
    use training::learn::{ChallengerChange, LearnOutcome};
    let LearnFixture { tmp, active_dir, active, db, options } = learn_fixture();
    let hash = |dir: &Path| Checkpoint::read_meta(dir).expect("meta").training_data_hash;
    let wrong = hash(&active_dir);
    let challenger = tmp.path().join("active.challenger");
    let decisions = || std::fs::read_to_string(tmp.path().join("active.promotions.jsonl")).expect("decision log");

    create_log(&db, Backend::Sqlite, &active, 3000).await;
    let first = training::learn::run(&options).await.expect("learn");
    let LearnOutcome::Evaluated { judged: None, candidate: Some(report), challenger: ChallengerChange::Installed } = &first else {
        panic!("expected a new challenger: {}", first.describe());
    };
    assert!(!first.promoted(), "never promoted on the held-out rows alone: {}", first.describe());
    assert!(report.ope.as_ref().is_some_and(|o| o.dr_difference > 0.0), "{}", first.describe());
    assert_eq!(hash(&active_dir), wrong, "the active checkpoint is unchanged");
    assert_eq!(hash(&challenger), hash(&report.checkpoint), "the candidate is the challenger");
    assert_eq!(decisions().lines().count(), 1);
    assert!(decisions().contains("\"promoted\":false"));

    // Too few rows logged since the challenger was trained: it keeps waiting.
    append_log(&db, Backend::Sqlite, &active, 3000..3050, "2099-01-01", false).await;
    let waiting = training::learn::run(&options).await.expect("learn while the challenger waits");
    assert!(matches!(waiting, LearnOutcome::ChallengerWaiting { fresh: 50, repeats: 0, needed: 100 }), "{}", waiting.describe());
    assert_eq!(hash(&active_dir), wrong);
    let installed = hash(&challenger);

    // Enough of them: judged on those rows only, and promoted.
    append_log(&db, Backend::Sqlite, &active, 3050..4050, "2099-01-02", false).await;
    let judged = training::learn::run(&options).await.expect("learn with a judgement due");
    let LearnOutcome::Evaluated { judged: Some(record), .. } = &judged else {
        panic!("expected the challenger judged: {}", judged.describe());
    };
    assert!(record.promoted && judged.promoted(), "{}", judged.describe());
    assert_eq!(record.ope.rows, 1050, "judged on the rows logged after it was trained");
    assert!(record.ope.gate_lower_bound > 0.0, "{:?}", record.ope);
    assert_eq!(hash(&active_dir), installed, "the challenger is now the active checkpoint");
    assert_ne!(challenger.exists().then(|| hash(&challenger)), Some(installed), "the judged challenger was retired");
    assert!(decisions().lines().count() >= 2);
}

/// Rows repeating the prompts a challenger learned from do not judge it (it could be right
/// on them by remembering their ratings); asked to, it is judged on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_is_not_judged_on_the_prompts_it_learned_from() {
    use training::learn::{ChallengerChange, LearnOutcome};
    let LearnFixture { tmp: _tmp, active, db, mut options, .. } = learn_fixture();
    create_log(&db, Backend::Sqlite, &active, 3000).await;
    let first = training::learn::run(&options).await.expect("learn");
    assert!(matches!(first, LearnOutcome::Evaluated { challenger: ChallengerChange::Installed, .. }), "{}", first.describe());

    // 1,050 new requests, every one repeating a prompt of the first 1,050 logged.
    append_log_drawn_as(&db, Backend::Sqlite, &active, 3000..4050, "2099-01-02", false, 0).await;
    options.dry_run = true;
    let waiting = training::learn::run(&options).await.expect("learn");
    assert!(matches!(waiting, LearnOutcome::ChallengerWaiting { fresh: 0, repeats: 1050, needed: 100 }), "{}", waiting.describe());

    options.judge_repeated_prompts = true;
    options.force = true;
    let judged = training::learn::run(&options).await.expect("learn, repeats judged");
    let LearnOutcome::Evaluated { judged: Some(record), .. } = &judged else {
        panic!("expected the challenger judged: {}", judged.describe());
    };
    assert_eq!(record.ope.rows, 1050, "{}", judged.describe());

    // Half new prompts: judged on those alone, and the rest named as left out.
    options.judge_repeated_prompts = false;
    append_log(&db, Backend::Sqlite, &active, 4050..5100, "2099-01-03", false).await;
    let judged = training::learn::run(&options).await.expect("learn on new prompts");
    let LearnOutcome::Evaluated { judged: Some(record), .. } = &judged else {
        panic!("expected the challenger judged: {}", judged.describe());
    };
    assert_eq!(record.ope.rows, 1050, "{}", judged.describe());
    assert!(record.reason.contains("1050 more repeating a prompt it learned from left out"), "{}", record.reason);
}

/// A challenger ahead on its estimate but not on its bound is kept, keeps its share, and is
/// judged again by the next run on every row logged since it was trained; with that many more
/// rows it is promoted. The margin is set just under the first judgement's estimate (read from
/// a dry run), so the first verdict is the undecided one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promising_challenger_is_judged_again_on_more_rows() {
    use training::learn::{ChallengerChange, LearnOptions, LearnOutcome};
    let LearnFixture { tmp, active_dir, active, db, mut options } = learn_fixture();
    options.force = true;
    options.challenger_looks = 2;
    let hash = |dir: &Path| Checkpoint::read_meta(dir).expect("meta").training_data_hash;
    let wrong = hash(&active_dir);
    let challenger = tmp.path().join("active.challenger");

    create_log(&db, Backend::Sqlite, &active, 3000).await;
    let first = training::learn::run(&options).await.expect("learn");
    assert!(matches!(first, LearnOutcome::Evaluated { challenger: ChallengerChange::Installed, .. }), "{}", first.describe());
    let installed = hash(&challenger);

    append_log(&db, Backend::Sqlite, &active, 3000..3120, "2099-01-01", false).await;
    let dry = LearnOptions { dry_run: true, ..options.clone() };
    let probe = training::learn::run(&dry).await.expect("dry run");
    let LearnOutcome::Evaluated { judged: Some(probe), .. } = &probe else { panic!("expected a judgement: {}", probe.describe()) };
    let (estimate, se) = (probe.ope.dr_difference, probe.ope.dr_difference_se());
    assert!(estimate > 0.0 && se > 0.0, "{:?}", probe.ope);
    assert_eq!(hash(&challenger), installed, "a dry run changes nothing");
    // Ahead of the margin by 1.7 standard errors: past a single look's 95% bound (1.645) but
    // short of the bound each of two looks uses (1.875).
    options.promote_margin = estimate - 1.7 * se - probe.ope.clip_bias_allowance;

    let undecided = training::learn::run(&options).await.expect("first judgement");
    let LearnOutcome::Evaluated { judged: Some(record), candidate: None, challenger: ChallengerChange::Kept } = &undecided else {
        panic!("expected the challenger kept: {}", undecided.describe());
    };
    assert!(!record.promoted && !undecided.promoted(), "{}", undecided.describe());
    assert!(record.reason.contains("judgement 1 of at most 2"), "{}", record.reason);
    assert_eq!(hash(&challenger), installed, "the challenger keeps serving its share");
    assert_eq!(hash(&active_dir), wrong);

    append_log(&db, Backend::Sqlite, &active, 3120..5120, "2099-01-02", false).await;
    let second = training::learn::run(&options).await.expect("second judgement");
    let LearnOutcome::Evaluated { judged: Some(record), .. } = &second else {
        panic!("expected the challenger judged again: {}", second.describe());
    };
    assert_eq!(record.ope.rows, 2120, "judged on every row logged since it was trained");
    assert!(record.reason.contains("judgement 2 of at most 2"), "{}", record.reason);
    assert!(record.promoted, "{}", second.describe());
    assert_eq!(hash(&active_dir), installed, "the kept challenger is now the active checkpoint");
}

/// `switchyard learn`: a log too small to learn from promotes nothing and says so; a run
/// promotes the better policy once; running again with nothing new does nothing; one new
/// rating makes the next run train again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_is_idempotent_and_refuses_a_log_too_small() {
    use training::learn::{LearnOptions, LearnOutcome};
    let tmp = tempfile::tempdir().expect("tmp");
    let active_dir = tmp.path().join("active");
    write_wrong_checkpoint(&active_dir);
    let active = Checkpoint::load(&active_dir, "test/synthetic", DIM).expect("load active");
    let options = |db: &str| {
        let mut o = LearnOptions::new(db.to_owned(), active_dir.clone());
        o.train = TrainConfig { progress: false, learning_rate: 3e-3, ..TrainConfig::default() };
        // The single-stage gate: a candidate is promoted on the held-out rows.
        o.install_challenger = false;
        o
    };

    let small = format!("sqlite://{}?mode=rwc", tmp.path().join("small.db").display());
    create_log(&small, Backend::Sqlite, &active, 40).await;
    let outcome = training::learn::run(&options(&small)).await.expect("learn on a small log");
    assert!(matches!(outcome, LearnOutcome::TooFew { usable: 40, needed: 100 }), "{outcome:?}");
    assert!(outcome.describe().contains("no promotion"), "{}", outcome.describe());
    assert!(!tmp.path().join("active.promotions.jsonl").exists());
    let before = Checkpoint::read_meta(&active_dir).expect("meta").training_data_hash;

    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("log.db").display());
    create_log(&db, Backend::Sqlite, &active, 3000).await;
    let outcome = training::learn::run(&options(&db)).await.expect("learn");
    assert!(outcome.promoted(), "{}", outcome.describe());
    let promoted = Checkpoint::read_meta(&active_dir).expect("meta").training_data_hash;
    assert_ne!(promoted, before);
    let decisions = || std::fs::read_to_string(tmp.path().join("active.promotions.jsonl")).expect("decision log").lines().count();
    assert_eq!(decisions(), 1);

    let again = training::learn::run(&options(&db)).await.expect("learn again");
    assert!(matches!(again, LearnOutcome::NothingNew(_)), "{again:?}");
    assert_eq!(decisions(), 1, "nothing new: no decision recorded");
    assert_eq!(Checkpoint::read_meta(&active_dir).expect("meta").training_data_hash, promoted);

    // A late rating of an old request is new information.
    let pool = sqlx::SqlitePool::connect(&db).await.expect("db");
    sqlx::query("INSERT INTO feedback (request_id, score, source, created_at) VALUES (unhex(?), 0.0, 'test', '2026-01-02T00:00:00Z')")
        .bind(request_id(7, Backend::Sqlite))
        .execute(&pool)
        .await
        .expect("feedback");
    pool.close().await;
    let third = training::learn::run(&options(&db)).await.expect("learn a third time");
    assert!(matches!(third, LearnOutcome::Evaluated { .. }), "{third:?}");
    assert_eq!(decisions(), 2);
}
