//! Log writer throughput to Postgres, in rows per second (target: ≥ 20,000), and the SQLite
//! insert's cost per row.
//!
//! `cargo bench -p gateway --bench log_writer` against Postgres at 127.0.0.1:5432 (user
//! `postgres`, trust auth; `SWITCHYARD_TEST_PG` overrides the server URL). Creates and drops
//! its own database. `SWITCHYARD_BENCH_ROWS` sets the rows per run (default 200,000).
//! `SWITCHYARD_BENCH_DB=sqlite` measures the SQLite store instead (a throwaway file): batches
//! of the sizes a loaded gateway hands it (the writer takes what gathered in a few
//! milliseconds, so sizes vary from batch to batch) and full batches of 512, inserted one
//! after another through the pool (`insert_rows`, sqlx's multi-row statements); then the
//! same rows through the log writer, which puts rows into a database file on a connection of
//! its own (one prepared insert per row): what the outcome log costs a busy gateway per
//! request off its serving threads; last, the writer into a `WITHOUT ROWID` copy of the table
//! (one B-tree per row instead of two), to compare layouts. `SWITCHYARD_BENCH_WRITER_ONLY=1`
//! runs only the writer's part (to compare two builds of it, alternating); `=passthrough` only
//! its passthrough rows in batches of 512, to count the insert thread's instructions per row
//! under valgrind (steadier than CPU time on a shared host; see bench/README.md).
//!
//! Rows look like production rows: a 384-dimension embedding (1.5 KB), three candidates
//! with predictions as JSON, tenant, key id, prompt hash; no prompt text. Rows are made
//! before the clock starts; the clock covers queueing every row and the writer's shutdown,
//! which returns once the last batch is committed.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // benchmark harness: abort loudly

use std::time::{Duration, Instant};

use chrono::Utc;
use gateway::store::{embedding_to_bytes, DecisionRecord, LogRow, ScoredCandidate, LogStore, LogWriter, Store, WriterConfig};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

fn row(i: usize, embedding: &[u8]) -> LogRow {
    LogRow {
        id: Uuid::now_v7(),
        created_at: Utc::now(),
        tenant: Some(format!("tenant-{}", i % 17)),
        key_id: Some(Uuid::now_v7()),
        route: Some("auto".into()),
        provider: "openai".into(),
        model: ["gpt-4o-mini", "claude-3-5-haiku", "mixtral-8x7b"][i % 3].into(),
        stream: i.is_multiple_of(2),
        candidates: Some(DecisionRecord {
            decision: Some("selected".into()),
            tradeoff: Some("quality=1,cost=0.05,latency=0.02".into()),
            decision_ms: Some(3.2),
            scores: [("gpt-4o-mini", 0.71, 420.0, 0.0002), ("claude-3-5-haiku", 0.78, 610.0, 0.0009), ("mixtral-8x7b", 0.64, 380.0, 0.0001)]
                .into_iter()
                .map(|(model, quality, latency_ms, cost_usd)| ScoredCandidate {
                    model: model.into(),
                    quality,
                    cost_usd,
                    latency_ms,
                    utility: quality - cost_usd * 50.0,
                    probability: 0.8,
                    input_usd_per_mtok: 0.15,
                    output_usd_per_mtok: 0.6,
                })
                .collect(),
            ..DecisionRecord::default()
        }),
        propensity: Some(0.8),
        checkpoint_version: Some("selector-v3".into()),
        shadow_choice: Some("claude-3-5-haiku".into()),
        prompt_hash: Some(format!("{:064x}", i)),
        embedding: Some(embedding.to_vec()),
        prompt_text: None,
        answer_text: None,
        prompt_tokens: Some(120 + (i % 50) as i64),
        completion_tokens: Some(300 + (i % 80) as i64),
        cost_usd: Some(0.00042),
        latency_ms: 812.5,
        first_token_ms: Some(95.0),
        status: 200,
        error_class: None,
        cache_result: Some("miss".into()),
    }
}

async fn run(store: &Store, rows: Vec<LogRow>, batch_size: usize, concurrency: usize, label: &str) -> anyhow::Result<f64> {
    let n = rows.len();
    let before = store.count_rows().await?;
    let spill_dir = std::env::temp_dir().join(format!("switchyard-bench-{}", Uuid::now_v7().simple()));
    let writer = LogWriter::spawn(
        store.clone(),
        WriterConfig {
            batch_size,
            batch_interval: Duration::from_millis(50),
            channel_capacity: 16_384,
            spill_path: spill_dir.join("spill.jsonl"),
            retry_interval: Duration::from_secs(1),
            write_timeout: Duration::from_secs(30),
            concurrency,
            store_prompts: false,
            log_requests: true,
        },
    )?;
    let log = writer.handle();
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let machine_before = machine_cpu_seconds();
    for row in rows {
        // Waits for room: this measures the writer, not the spill path.
        log.send(row).await?;
    }
    let stats = writer.shutdown().await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    let machine = machine_cpu_seconds() - machine_before;
    let stored = store.count_rows().await? - before;
    anyhow::ensure!(stored == n as i64, "{label}: {stored} rows stored of {n}: {stats:?}");
    anyhow::ensure!(stats.spilled == 0, "{label}: rows spilled during the benchmark: {stats:?}");
    let rate = n as f64 / elapsed;
    // The machine's figure is the bench process plus the Postgres server (and anything else
    // running: run it on an otherwise idle machine).
    println!(
        "{label:<44} {n:>8} rows in {elapsed:>6.2} s = {rate:>9.0} rows/s; CPU per row: {:>5.2} µs here, {:>5.2} µs machine-wide",
        cpu * 1e6 / n as f64,
        machine * 1e6 / n as f64
    );
    let _ = std::fs::remove_dir_all(spill_dir);
    Ok(rate)
}

/// Inserts `rows` into a fresh SQLite file in batches of the sizes `batch_sizes` yields.
async fn sqlite_run(rows: Vec<LogRow>, mut batch_sizes: impl FnMut() -> usize, label: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", dir.join("log.db").display()), 1)?;
    store.migrate().await?;
    let n = rows.len();
    let mut batches = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let size = batch_sizes().max(1);
        batches.push(rows.by_ref().take(size).collect::<Vec<_>>());
    }
    let count = batches.len();
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    for batch in &batches {
        store.insert_rows(batch).await?;
    }
    let cpu = process_cpu_seconds() - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(store.count_rows().await? == n as i64, "{label}: rows missing");
    println!(
        "{label:<40} {n:>7} rows in {count:>5} batches: {:>6.2} µs/row wall, {:>6.2} µs/row CPU (user + system, all threads)",
        elapsed * 1e6 / n as f64,
        cpu * 1e6 / n as f64
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// How the log table is laid out on disk for a SQLite writer run.
#[derive(Clone, Copy, PartialEq)]
enum TableLayout {
    /// The migrated table: rows in a rowid B-tree, plus the primary key's index on `id`.
    Migrated,
    /// The same columns `WITHOUT ROWID`: one B-tree keyed by `id` that holds the whole row.
    /// One insert per row instead of two, but interior pages hold whole rows.
    WithoutRowid,
}

/// Pushes `rows` through the log writer into a fresh SQLite file (the production path: the
/// writer's own connection, one prepared insert per row) in full batches of `batch_size`.
async fn sqlite_writer_run(rows: Vec<LogRow>, batch_size: usize, layout: TableLayout, label: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("log.db");
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", file.display()), 1)?;
    store.migrate().await?;
    if layout == TableLayout::WithoutRowid {
        let connection = rusqlite::Connection::open(&file)?;
        let create: String = connection.query_row("SELECT sql FROM sqlite_master WHERE name = 'request_log'", [], |r| r.get(0))?;
        connection.execute_batch(&format!("DROP TABLE request_log; {create} WITHOUT ROWID;"))?;
    }
    let n = rows.len();
    let writer = LogWriter::spawn(
        store.clone(),
        WriterConfig {
            batch_size,
            batch_interval: Duration::from_secs(1),
            channel_capacity: n + 1,
            spill_path: dir.join("spill.jsonl"),
            retry_interval: Duration::from_millis(100),
            write_timeout: Duration::from_secs(30),
            concurrency: 1,
            store_prompts: false,
            log_requests: true,
        },
    )?;
    let log = writer.handle();
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    for row in rows {
        log.send(row).await?;
    }
    let stats = writer.shutdown().await;
    let cpu = process_cpu_seconds() - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(stats.written == n as u64 && store.count_rows().await? == n as i64, "{label}: rows missing ({stats:?})");
    println!(
        "{label:<40} {n:>7} rows, batches of {batch_size:>3}: {:>6.2} µs/row wall, {:>6.2} µs/row CPU (user + system, all threads)",
        elapsed * 1e6 / n as f64,
        cpu * 1e6 / n as f64
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// CPU time every core of the machine has spent busy so far (`/proc/stat`: all but idle and
/// iowait), in seconds; 0 where `/proc` is missing.
fn machine_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = stat.lines().next() else { return 0.0 };
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: f64 = ticks.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    if hz > 0.0 { busy / hz } else { 0.0 }
}

/// User + system CPU time of this process so far (every thread, SQLite's workers included).
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

async fn sqlite_main(rows: usize) -> anyhow::Result<()> {
    let embedding: Vec<f32> = (0..384).map(|i| (i as f32 * 0.37).sin() / 19.6).collect();
    let embedding = embedding_to_bytes(&embedding);
    // Passthrough rows: no decision, no embedding (the shape `bench/logging.sh` logs).
    let passthrough = |i| LogRow { embedding: None, candidates: None, propensity: None, shadow_choice: None, ..row(i, &embedding) };
    // `SWITCHYARD_BENCH_WRITER_ONLY=1`: only the writer's runs, for A/B comparisons of it;
    // `=passthrough`: only its passthrough run, for counting instructions under valgrind.
    let writer_only = std::env::var("SWITCHYARD_BENCH_WRITER_ONLY").ok();
    if writer_only.as_deref() == Some("passthrough") {
        let rows = (0..rows).map(passthrough).collect();
        return sqlite_writer_run(rows, 512, TableLayout::Migrated, "writer: passthrough rows").await;
    }
    if writer_only.as_deref() != Some("1") {
        sqlite_run((0..rows / 4).map(passthrough).collect(), || 512, "warm-up").await?;
        // A deterministic spread of sizes between 16 and 143 (what 2 ms of gathering holds at
        // 8k-70k requests a second).
        let mut state = 12345_u64;
        let varied = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            16 + (state >> 33) as usize % 128
        };
        sqlite_run((0..rows).map(passthrough).collect(), varied, "passthrough rows, batches of 16-143").await?;
        sqlite_run((0..rows).map(passthrough).collect(), || 80, "passthrough rows, batches of 80").await?;
        sqlite_run((0..rows).map(passthrough).collect(), || 512, "passthrough rows, batches of 512").await?;
        sqlite_run((0..rows).map(|i| row(i, &embedding)).collect(), varied, "routed rows (1.5 KB embedding), 16-143").await?;
    }
    // The same rows through the log writer, as the gateway writes them.
    for batch_size in [80, 512] {
        sqlite_writer_run((0..rows).map(passthrough).collect(), batch_size, TableLayout::Migrated, "writer: passthrough rows").await?;
    }
    sqlite_writer_run((0..rows).map(|i| row(i, &embedding)).collect(), 80, TableLayout::Migrated, "writer: routed rows (1.5 KB embedding)").await?;
    // A table without the rowid B-tree, for comparison (not what the migrations create).
    let without_rowid = TableLayout::WithoutRowid;
    sqlite_writer_run((0..rows).map(passthrough).collect(), 512, without_rowid, "writer, WITHOUT ROWID: passthrough rows").await?;
    sqlite_writer_run((0..rows).map(|i| row(i, &embedding)).collect(), 80, without_rowid, "writer, WITHOUT ROWID: routed rows").await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::var("SWITCHYARD_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    if std::env::var("SWITCHYARD_BENCH_DB").is_ok_and(|db| db == "sqlite") {
        return sqlite_main(rows).await;
    }
    let server = std::env::var("SWITCHYARD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("switchyard_bench_{}", Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
    admin.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await?;

    let result = async {
        let store = Store::connect(&format!("{server}/{name}"), 4)?;
        store.migrate().await?;
        let embedding: Vec<f32> = (0..384).map(|i| (i as f32 * 0.37).sin() / 19.6).collect();
        let embedding = embedding_to_bytes(&embedding);
        // Warm up: connections, prepared statements, table files.
        run(&store, (0..5_000).map(|i| row(i, &embedding)).collect(), 512, 2, "warm-up").await?;
        let mut rates = Vec::new();
        // The default (batch 512, 2 inserts at a time) first.
        for (batch_size, concurrency) in [(512, 2), (512, 1), (512, 4), (1024, 2)] {
            let batch = (0..rows).map(|i| row(i, &embedding)).collect();
            let label = format!("batch {batch_size}, {concurrency} in flight, 1.5 KB embedding");
            rates.push(run(&store, batch, batch_size, concurrency, &label).await?);
        }
        let small = (0..rows)
            .map(|i| LogRow { embedding: None, candidates: None, ..row(i, &embedding) })
            .collect();
        run(&store, small, 512, 2, "batch 512, 2 in flight, no embedding/JSON").await?;
        // Passthrough rows (no decision, no embedding: what `bench/logging.sh` logs) in the
        // batch sizes a loaded gateway hands the writer.
        for batch_size in [80, 512] {
            let passthrough = (0..rows)
                .map(|i| LogRow { embedding: None, candidates: None, propensity: None, shadow_choice: None, ..row(i, &embedding) })
                .collect();
            run(&store, passthrough, batch_size, 2, &format!("passthrough rows, batch {batch_size}, 2 in flight")).await?;
        }
        store.close().await;
        anyhow::Ok(rates)
    }
    .await;

    admin.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str()).await?;
    let rates = result?;
    let best = rates.iter().copied().fold(0.0, f64::max);
    println!("writer throughput to Postgres (defaults: batch 512, 2 in flight): {:.0} rows/s (target ≥ 20000)", rates[0]);
    anyhow::ensure!(best > 0.0);
    Ok(())
}
