//! The batch writer against real databases: throughput-shaped loads land completely, the
//! spill file carries rows through an outage and a restart, and a row the database refuses
//! does not block the others.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::path::Path;
use std::time::Duration;

use gateway::store::{LogStore, LogWriter, Store, WriterConfig, WriterStats};
use store_support::{full_row, minimal_row, wait_for, TcpProxy, TestPg};

fn writer_config(dir: &Path) -> WriterConfig {
    WriterConfig {
        batch_size: 512,
        batch_interval: Duration::from_millis(50),
        channel_capacity: 16_384,
        spill_path: dir.join("spill.jsonl"),
        retry_interval: Duration::from_millis(100),
        write_timeout: Duration::from_secs(2),
        concurrency: 2,
        store_prompts: true,
        log_requests: true,
    }
}

fn assert_nothing_lost(stats: &WriterStats) {
    assert_eq!(stats.dropped_channel_full, 0, "{stats:?}");
    assert_eq!(stats.dropped_spill_failed, 0, "{stats:?}");
    assert_eq!(stats.unreadable, 0, "{stats:?}");
}

async fn five_thousand_rows_land(store: Store, config: WriterConfig) -> WriterStats {
    let writer = LogWriter::spawn(store.clone(), config).expect("writer");
    let log = writer.handle();
    for i in 0..5_000 {
        // Alternate full rows (embedding, JSON, prompt) and minimal ones.
        log.push(if i % 2 == 0 { full_row() } else { minimal_row() });
    }
    let stats = writer.shutdown().await;
    assert_eq!(stats.accepted, 5_000);
    assert_eq!(stats.written + stats.replayed, 5_000, "{stats:?}");
    assert_nothing_lost(&stats);
    assert_eq!(stats.spill_bytes, 0, "{stats:?}");
    assert_eq!(store.count_rows().await.expect("count"), 5_000);
    stats
}

#[tokio::test]
async fn five_thousand_rows_land_in_postgres() {
    let db = TestPg::create().await;
    let store = Store::connect(&db.url, 4).expect("url");
    store.migrate().await.expect("migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let stats = five_thousand_rows_land(store, writer_config(dir.path())).await;
    assert_eq!(stats.written, 5_000, "no outage, no spill: {stats:?}");
}

#[tokio::test]
async fn five_thousand_rows_land_in_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("log.db").display()), 4).expect("url");
    store.migrate().await.expect("migrate");
    five_thousand_rows_land(store, writer_config(dir.path())).await;
}

/// A channel far smaller than the burst: rows that do not fit go to the spill thread and are
/// replayed, none is dropped.
#[tokio::test]
async fn a_full_channel_spills_instead_of_dropping() {
    let db = TestPg::create().await;
    let store = Store::connect(&db.url, 4).expect("url");
    store.migrate().await.expect("migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = WriterConfig {
        channel_capacity: 16,
        batch_size: 64,
        ..writer_config(dir.path())
    };
    let stats = five_thousand_rows_land(store, config).await;
    assert!(stats.overflowed > 0, "the burst should overflow a 16-row channel: {stats:?}");
    assert!(stats.replayed >= stats.overflowed, "{stats:?}");
}

/// Database down: rows spill; database back: the spill file is replayed in full and removed.
#[tokio::test]
async fn database_down_spills_then_replays() {
    let db = TestPg::create().await;
    let proxy = TcpProxy::start(store_support::pg_addr()).await;
    let store = Store::connect(&db.url_via(proxy.addr), 4).expect("url");
    store.migrate().await.expect("migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = writer_config(dir.path());
    let spill_path = config.spill_path.clone();
    let writer = LogWriter::spawn(store.clone(), config).expect("writer");
    let log = writer.handle();

    for _ in 0..1_000 {
        log.push(full_row());
    }
    log.flush().await.expect("flush");
    assert_eq!(db.count_rows().await, 1_000);

    proxy.cut().await;
    let mut during = Vec::new();
    for i in 0..2_000 {
        let row = if i % 2 == 0 { full_row() } else { minimal_row() };
        during.push(row.id);
        log.push(row);
    }
    log.flush().await.expect("flush");
    let stats = log.stats();
    assert_eq!(stats.spilled, 2_000, "{stats:?}");
    assert!(stats.write_failures > 0, "{stats:?}");
    assert!(spill_path.exists());
    assert_eq!(db.count_rows().await, 1_000, "nothing reached the database while cut off");
    assert!(during.iter().all(|id| log.is_spilled(*id)), "spilled rows still accept feedback");

    // Rows that arrive while the spill file is non-empty queue behind it.
    proxy.restore().await;
    for _ in 0..500 {
        log.push(minimal_row());
    }
    let landed = wait_for(Duration::from_secs(30), async || db.count_rows().await == 3_500).await;
    assert!(landed, "rows in the database: {}, stats {:?}", db.count_rows().await, log.stats());
    let replayed = wait_for(Duration::from_secs(5), async || !spill_path.exists()).await;
    assert!(replayed, "spill file removed once replayed");
    assert!(during.iter().all(|id| !log.is_spilled(*id)));

    let stats = writer.shutdown().await;
    assert_nothing_lost(&stats);
    assert_eq!(stats.accepted, 3_500);
    assert_eq!(stats.written + stats.replayed, 3_500, "{stats:?}");
    assert!(stats.replayed >= 2_000, "{stats:?}");
    assert_eq!(db.count_rows().await, 3_500);
    store.close().await;
}

/// Rows spilled by a run that ended while the database was down are written by the next run.
#[tokio::test]
async fn spill_left_by_an_earlier_run_is_replayed_at_start() {
    let db = TestPg::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = WriterConfig {
        write_timeout: Duration::from_millis(500),
        ..writer_config(dir.path())
    };

    // Nothing listens on port 1: every write fails.
    let dead = Store::connect("postgres://postgres@127.0.0.1:1/nothing", 1).expect("url");
    let writer = LogWriter::spawn(dead, config.clone()).expect("writer");
    let log = writer.handle();
    for _ in 0..700 {
        log.push(full_row());
    }
    let stats = writer.shutdown().await;
    assert_eq!(stats.spilled, 700, "{stats:?}");
    // After shutdown, rows still go to the spill file rather than nowhere.
    log.push(minimal_row());
    assert_eq!(log.stats().spilled, 701);

    let store = Store::connect(&db.url, 2).expect("url");
    store.migrate().await.expect("migrate");
    let writer = LogWriter::spawn(store.clone(), config.clone()).expect("writer");
    let landed = wait_for(Duration::from_secs(20), async || db.count_rows().await == 701).await;
    let stats = writer.shutdown().await;
    assert!(landed, "{stats:?}");
    assert_eq!(stats.replayed, 701);
    assert!(!config.spill_path.exists());
}

/// A value Postgres refuses (NUL in text) sets that one row aside; the rest of its batch lands.
#[tokio::test]
async fn a_row_the_database_refuses_is_set_aside() {
    let db = TestPg::create().await;
    let store = Store::connect(&db.url, 2).expect("url");
    store.migrate().await.expect("migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = writer_config(dir.path());
    let writer = LogWriter::spawn(store.clone(), config.clone()).expect("writer");
    let log = writer.handle();
    for i in 0..100 {
        let mut row = full_row();
        if i == 37 {
            row.model = "bad\0model".into();
        }
        log.push(row);
    }
    // NUL in the prompt is cleaned rather than refused.
    let mut prompt = full_row();
    prompt.prompt_text = Some("a\0b".into());
    log.push(prompt.clone());
    let stats = writer.shutdown().await;
    assert_eq!(stats.rejected, 1, "{stats:?}");
    assert_eq!(stats.written, 100, "{stats:?}");
    assert_eq!(db.count_rows().await, 100);
    let kept = std::fs::read_to_string(dir.path().join("spill.jsonl.rejected")).expect("rejected file");
    assert_eq!(kept.lines().count(), 1);
    assert!(kept.contains(r"bad\u0000model"));
    let stored = store.fetch_row(prompt.id).await.expect("fetch").expect("row");
    assert_eq!(stored.prompt_text.as_deref(), Some("ab"));
}

/// Rows reach Postgres by binary `COPY`: every field reads back as it was pushed, and a batch
/// holding an id already stored (a retried batch whose first attempt committed) lands the
/// rest and skips that one, as the `ON CONFLICT` insert did.
#[tokio::test]
async fn every_field_copied_into_postgres_reads_back_and_stored_ids_are_skipped() {
    let db = TestPg::create().await;
    let store = Store::connect(&db.url, 2).expect("url");
    store.migrate().await.expect("migrate");
    let stored_before = full_row();
    store.insert_rows(std::slice::from_ref(&stored_before)).await.expect("first insert");
    let (full, minimal) = (full_row(), minimal_row());
    let batch = [full.clone(), stored_before.clone(), minimal.clone()];
    store.insert_rows(&batch).await.expect("a batch with a stored id");
    assert_eq!(db.count_rows().await, 3);
    for row in [&stored_before, &full, &minimal] {
        assert_eq!(store.fetch_row(row.id).await.expect("fetch").as_ref(), Some(row));
    }
    // Through the writer too: the same batch again is all skipped, nothing fails.
    let dir = tempfile::tempdir().expect("temp dir");
    let writer = LogWriter::spawn(store.clone(), writer_config(dir.path())).expect("writer");
    let log = writer.handle();
    for row in batch {
        log.push(row);
    }
    let stats = writer.shutdown().await;
    assert_eq!((stats.written, stats.write_failures, stats.rejected), (3, 0, 0), "{stats:?}");
    assert_eq!(db.count_rows().await, 3);
}

async fn sqlite_file(dir: &Path) -> Store {
    let store = Store::connect(&format!("sqlite://{}", dir.join("log.db").display()), 2).expect("url");
    store.migrate().await.expect("migrate");
    store
}

/// Rows into an SQLite file take the writer's own connection; read back through the pool,
/// every field is what was pushed, and the rows sort and filter by time with the pool's.
#[tokio::test]
async fn every_field_the_sqlite_file_writer_stores_reads_back_through_the_pool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sqlite_file(dir.path()).await;
    // A row the pool wrote, to compare the two writers' encodings of the same fields.
    let mut by_pool = full_row();
    by_pool.created_at -= chrono::TimeDelta::seconds(1);
    store.insert_rows(std::slice::from_ref(&by_pool)).await.expect("pool insert");
    let writer = LogWriter::spawn(store.clone(), writer_config(dir.path())).expect("writer");
    let log = writer.handle();
    let (full, minimal) = (full_row(), minimal_row());
    log.push(full.clone());
    log.push(minimal.clone());
    // Already stored: skipped, not a failure.
    log.push(by_pool.clone());
    let stats = writer.shutdown().await;
    assert_eq!(stats.written, 3, "{stats:?}");
    assert_eq!(stats.write_failures, 0, "{stats:?}");
    assert_eq!(store.count_rows().await.expect("count"), 3);
    assert_eq!(store.fetch_row(full.id).await.expect("fetch"), Some(full.clone()));
    assert_eq!(store.fetch_row(minimal.id).await.expect("fetch"), Some(minimal.clone()));
    let Store::Sqlite(sqlite) = &store else { panic!("sqlite store") };
    let stored: Vec<(String, String)> = sqlx::query_as("SELECT typeof(created_at) || typeof(id) || typeof(stream) || typeof(latency_ms), created_at FROM request_log ORDER BY created_at")
        .fetch_all(sqlite.pool())
        .await
        .expect("select");
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|(types, _)| types == &stored[0].0), "{stored:?}");
    let since: i64 = sqlx::query_scalar("SELECT count(*) FROM request_log WHERE created_at >= ?")
        .bind(full.created_at.min(minimal.created_at))
        .fetch_one(sqlite.pool())
        .await
        .expect("count since");
    assert_eq!(since, 2);
}

/// The file writer binds only the columns a row has values for, with one statement per set
/// of them: rows that each carry one optional field, interleaved with bare rows in one batch,
/// read back field for field (a value bound to the wrong column would not).
#[tokio::test]
async fn rows_with_any_set_of_fields_read_back_from_the_sqlite_file_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sqlite_file(dir.path()).await;
    let writer = LogWriter::spawn(store.clone(), writer_config(dir.path())).expect("writer");
    let log = writer.handle();
    let full = serde_json::to_value(full_row()).expect("json");
    let bare = serde_json::to_value(minimal_row()).expect("json");
    let (Some(full), Some(bare)) = (full.as_object(), bare.as_object()) else { panic!("rows are objects") };
    let mut rows = Vec::new();
    for (field, value) in full {
        if field == "id" || field == "created_at" || bare.get(field) == Some(value) {
            continue;
        }
        let mut one = bare.clone();
        one.insert(field.clone(), value.clone());
        one.insert("id".into(), serde_json::json!(uuid::Uuid::now_v7()));
        rows.push(serde_json::from_value::<gateway::store::LogRow>(one.into()).expect("row"));
    }
    assert!(rows.len() >= 18, "only {} fields differ between the full and the bare row", rows.len());
    let mut bare_rows = Vec::new();
    for row in &rows {
        log.push(row.clone());
        let bare_row = minimal_row();
        log.push(bare_row.clone());
        bare_rows.push(bare_row);
    }
    let stats = writer.shutdown().await;
    assert_eq!(stats.written as usize, rows.len() * 2, "{stats:?}");
    assert_eq!(stats.write_failures, 0, "{stats:?}");
    for row in rows.iter().chain(&bare_rows) {
        assert_eq!(store.fetch_row(row.id).await.expect("fetch").as_ref(), Some(row));
    }
}

/// A row SQLite refuses (here a trigger's RAISE) is set aside; the rest of its batch lands.
#[tokio::test]
async fn a_row_sqlite_refuses_is_set_aside() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sqlite_file(dir.path()).await;
    let Store::Sqlite(sqlite) = &store else { panic!("sqlite store") };
    sqlx::query("CREATE TRIGGER refuse BEFORE INSERT ON request_log WHEN NEW.model = 'refused' BEGIN SELECT RAISE(ABORT, 'refused model'); END")
        .execute(sqlite.pool())
        .await
        .expect("trigger");
    let writer = LogWriter::spawn(store.clone(), writer_config(dir.path())).expect("writer");
    let log = writer.handle();
    for i in 0..50 {
        let mut row = full_row();
        if i == 21 {
            row.model = "refused".into();
        }
        log.push(row);
    }
    let stats = writer.shutdown().await;
    assert_eq!(stats.rejected, 1, "{stats:?}");
    assert_eq!(stats.written, 49, "{stats:?}");
    assert_nothing_lost(&stats);
    assert_eq!(store.count_rows().await.expect("count"), 49);
    let kept = std::fs::read_to_string(dir.path().join("spill.jsonl.rejected")).expect("rejected file");
    assert_eq!(kept.lines().count(), 1);
    assert!(kept.contains("\"refused\""));
}

/// The writer sleeps while a batch fills, but not past the moment it is full, and a flush
/// does not wait out the batch's interval: with a 60 s interval, a full batch of 100 rows
/// lands within seconds, a flush of 10 more returns within seconds, and a part batch (5 more)
/// waits for its interval (here cut short by the shutdown).
#[tokio::test]
async fn a_full_batch_and_a_flush_do_not_wait_for_the_batch_interval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sqlite_file(dir.path()).await;
    let config = WriterConfig {
        batch_size: 100,
        batch_interval: Duration::from_secs(60),
        ..writer_config(dir.path())
    };
    let writer = LogWriter::spawn(store.clone(), config).expect("writer");
    let log = writer.handle();
    // On another thread, as the per-core serving threads push; the first row alone, so that
    // the writer is waiting for the batch to fill when the rest come.
    let pusher = log.clone();
    let pushing = std::thread::spawn(move || {
        pusher.push(minimal_row());
        std::thread::sleep(Duration::from_millis(200));
        for _ in 1..100 {
            pusher.push(minimal_row());
        }
    });
    let landed = wait_for(Duration::from_secs(10), async || store.count_rows().await.expect("count") == 100).await;
    assert!(landed, "a full batch is written without waiting 60 s: {:?}", log.stats());
    pushing.join().expect("pusher");

    for _ in 0..10 {
        log.push(minimal_row());
    }
    // The writer takes them and waits for the batch to fill.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), log.flush())
        .await
        .expect("a flush does not wait for the batch interval")
        .expect("flush");
    assert_eq!(store.count_rows().await.expect("count"), 110);

    for _ in 0..5 {
        log.push(minimal_row());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.count_rows().await.expect("count"), 110, "a part batch waits for its interval");
    let stats = writer.shutdown().await;
    assert_nothing_lost(&stats);
    assert_eq!(store.count_rows().await.expect("count"), 115, "{stats:?}");
}

#[tokio::test]
async fn a_row_is_built_only_when_the_log_keeps_it() {
    for log_requests in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite_file(dir.path()).await;
        let config = WriterConfig { log_requests, ..writer_config(dir.path()) };
        let writer = LogWriter::spawn(store.clone(), config).expect("writer");
        let log = writer.handle();
        let built = std::cell::Cell::new(0);
        for _ in 0..3 {
            log.push_with(|| {
                built.set(built.get() + 1);
                full_row()
            });
        }
        let stats = writer.shutdown().await;
        let rows = store.count_rows().await.expect("count");
        if log_requests {
            assert_eq!((built.get(), stats.accepted, stats.not_logged, rows), (3, 3, 0, 3), "{stats:?}");
        } else {
            assert_eq!((built.get(), stats.accepted, stats.not_logged, rows), (0, 0, 3, 0), "{stats:?}");
        }
    }
}
