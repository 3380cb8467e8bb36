//! Log writer throughput to Postgres, in rows per second (target: ≥ 20,000).
//!
//! `cargo bench -p gateway --bench log_writer` against Postgres at 127.0.0.1:5432 (user
//! `postgres`, trust auth; `SWITCHYARD_TEST_PG` overrides the server URL). Creates and drops
//! its own database. `SWITCHYARD_BENCH_ROWS` sets the rows per run (default 200,000).
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
    for row in rows {
        // Waits for room: this measures the writer, not the spill path.
        log.send(row).await?;
    }
    let stats = writer.shutdown().await;
    let elapsed = started.elapsed().as_secs_f64();
    let stored = store.count_rows().await? - before;
    anyhow::ensure!(stored == n as i64, "{label}: {stored} rows stored of {n}: {stats:?}");
    anyhow::ensure!(stats.spilled == 0, "{label}: rows spilled during the benchmark: {stats:?}");
    let rate = n as f64 / elapsed;
    println!("{label:<44} {n:>8} rows in {elapsed:>6.2} s = {rate:>9.0} rows/s");
    let _ = std::fs::remove_dir_all(spill_dir);
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("SWITCHYARD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let rows: usize = std::env::var("SWITCHYARD_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
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
