//! The schema on real databases: migrations, row round trips, feedback, virtual keys.
//! Each test runs against a fresh Postgres database and a SQLite file in a temp dir.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use gateway::store::keys::{create_key, hash_key, update_key, NewKey};
use gateway::store::{Authenticator, Feedback, KeyUpdate, LogStore, LogWriter, ModelAllowList, Store, WriterConfig};
use gateway::Error;
use store_support::{full_row, minimal_row, now_micros, TestPg};
use tempfile::TempDir;
use uuid::Uuid;

async fn postgres() -> (TestPg, Store) {
    let db = TestPg::create().await;
    let store = Store::connect(&db.url, 4).expect("postgres url");
    store.migrate().await.expect("migrate postgres");
    (db, store)
}

async fn sqlite() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let store = Store::connect(&url, 4).expect("sqlite url");
    store.migrate().await.expect("migrate sqlite");
    (dir, store)
}

async fn migrations_are_idempotent(store: &Store) {
    store.migrate().await.expect("second migrate is a no-op");
    store.ping().await.expect("ping");
    assert_eq!(store.count_rows().await.expect("count"), 0);
    assert!(store.list_keys().await.expect("keys").is_empty());
}

#[tokio::test]
async fn migrations_apply_on_postgres() {
    let (_db, store) = postgres().await;
    migrations_are_idempotent(&store).await;
}

#[tokio::test]
async fn migrations_apply_on_sqlite() {
    let (_dir, store) = sqlite().await;
    migrations_are_idempotent(&store).await;
}

async fn rows_round_trip(store: &Store) {
    let full = full_row();
    let minimal = minimal_row();
    store.insert_rows(&[full.clone(), minimal.clone()]).await.expect("insert");
    assert_eq!(store.fetch_row(full.id).await.expect("fetch"), Some(full.clone()));
    assert_eq!(store.fetch_row(minimal.id).await.expect("fetch"), Some(minimal.clone()));
    assert_eq!(store.fetch_row(Uuid::now_v7()).await.expect("fetch"), None);
    let embedding = gateway::store::embedding_from_bytes(full.embedding.as_deref().unwrap_or_default());
    assert_eq!(embedding, Some(vec![0.1, -0.2, 0.3, 1.0e-7, -4.5]));

    // Replaying a batch that did commit must not duplicate it.
    store.insert_rows(&[full.clone(), minimal]).await.expect("re-insert");
    assert_eq!(store.count_rows().await.expect("count"), 2);

    // More rows than one statement can bind: split into statements inside one transaction.
    let many: Vec<_> = (0..3_000).map(|_| full_row()).collect();
    store.insert_rows(&many).await.expect("insert many");
    assert_eq!(store.count_rows().await.expect("count"), 3_002);
    assert!(store.request_exists(many[2_999].id).await.expect("exists"));
    assert!(!store.request_exists(Uuid::now_v7()).await.expect("exists"));
}

#[tokio::test]
async fn every_field_round_trips_on_postgres() {
    let (_db, store) = postgres().await;
    rows_round_trip(&store).await;
}

#[tokio::test]
async fn every_field_round_trips_on_sqlite() {
    let (_dir, store) = sqlite().await;
    rows_round_trip(&store).await;
}

/// The SQL training runs: feedback joined to the request it rates.
const JOIN: &str = "SELECT r.model, f.score, f.source FROM request_log r JOIN feedback f ON f.request_id = r.id ORDER BY f.id";

async fn feedback_joins_its_request(store: &Store, spill_dir: &std::path::Path) {
    let row = full_row();
    store.insert_rows(std::slice::from_ref(&row)).await.expect("insert");
    let first = Feedback {
        request_id: row.id,
        score: 0.8,
        source: "user".into(),
        comment: Some("good answer".into()),
        created_at: now_micros(),
    };
    let second = Feedback {
        score: 0.0,
        source: "eval".into(),
        comment: None,
        ..first.clone()
    };
    store.insert_feedback(&first).await.expect("feedback");
    store.insert_feedback(&second).await.expect("feedback");
    assert_eq!(store.feedback_for(row.id).await.expect("read"), vec![first.clone(), second]);

    let joined: Vec<(String, f64, String)> = match store {
        Store::Postgres(s) => sqlx::query_as(JOIN).fetch_all(s.pool()).await,
        Store::Sqlite(s) => sqlx::query_as(JOIN).fetch_all(s.pool()).await,
    }
    .expect("join");
    assert_eq!(
        joined,
        vec![("gpt-4o-mini".to_owned(), 0.8, "user".to_owned()), ("gpt-4o-mini".to_owned(), 0.0, "eval".to_owned())]
    );

    // The schema itself refuses scores outside 0..1.
    let bad = Feedback { score: 1.5, ..first };
    assert!(store.insert_feedback(&bad).await.is_err());

    // Through the endpoint's logic: unknown ids are 404s; ids still on their way are accepted
    // (a queued row is written first, an hour before its batch would have been).
    let writer = LogWriter::spawn(
        store.clone(),
        WriterConfig {
            batch_size: 512,
            batch_interval: Duration::from_secs(3600),
            channel_capacity: 1024,
            spill_path: spill_dir.join("spill.jsonl"),
            retry_interval: Duration::from_millis(100),
            write_timeout: Duration::from_secs(5),
            concurrency: 2,
            store_prompts: false,
            log_requests: true,
        },
    )
    .expect("writer");
    let log = writer.handle();
    let unknown = format!(r#"{{"request_id":"{}","score":0.5}}"#, Uuid::now_v7());
    let result = gateway::store::feedback::record(store, &log, None, unknown.as_bytes()).await;
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
    let mut queued = minimal_row();
    queued.tenant = Some("acme".into());
    log.push(queued.clone());
    assert!(!store.request_exists(queued.id).await.expect("exists"), "the batch waits an hour");
    let body = format!(r#"{{"request_id":"{}","thumbs":"down","comment":"wrong"}}"#, queued.id);
    // Another tenant, or a caller without one, cannot rate acme's request while it is queued.
    for foreign in [Some(Some("globex")), Some(None)] {
        let result = gateway::store::feedback::record(store, &log, foreign, body.as_bytes()).await;
        assert!(matches!(result, Err(Error::NotFound(_))), "{foreign:?}: {result:?}");
    }
    let recorded = gateway::store::feedback::record(store, &log, Some(Some("acme")), body.as_bytes()).await.expect("accepted");
    assert_eq!(recorded.score, 0.0);
    assert!(store.request_exists(queued.id).await.expect("exists"), "the feedback wrote the queued row");
    let stats = writer.shutdown().await;
    assert_eq!(stats.written, 1);
    assert!(store.request_exists(queued.id).await.expect("exists"));
    assert_eq!(store.request_tenant(queued.id).await.expect("tenant"), Some(Some("acme".to_owned())));
    // Once stored, the same rule holds; the master key (None) may rate any request.
    let result = gateway::store::feedback::record(store, &log, Some(Some("globex")), body.as_bytes()).await;
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
    gateway::store::feedback::record(store, &log, None, body.as_bytes()).await.expect("master key");
    assert_eq!(store.feedback_for(queued.id).await.expect("read").len(), 2);
}

#[tokio::test]
async fn feedback_joins_its_request_on_postgres() {
    let (_db, store) = postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    feedback_joins_its_request(&store, dir.path()).await;
}

#[tokio::test]
async fn feedback_joins_its_request_on_sqlite() {
    let (dir, store) = sqlite().await;
    feedback_joins_its_request(&store, dir.path()).await;
}

fn bearer(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).expect("header"));
    headers
}

async fn keys_create_authenticate_revoke(store: &Store) {
    let (record, key) = create_key(
        store,
        NewKey {
            tenant: "acme".into(),
            name: Some("ci".into()),
            rpm: Some(60),
            tpm: Some(100_000),
            budget_usd: Some(12.5),
            models: ModelAllowList(Some(vec!["m1".into(), "auto".into()])),
        },
    )
    .await
    .expect("create key");
    assert!(key.starts_with("sk-sy-"));
    assert_eq!(record.key_hash, hash_key(&key).to_vec());
    let listed = store.list_keys().await.expect("list");
    assert_eq!(listed, vec![record.clone()]);
    assert!(!listed[0].key_hash.is_empty() && listed[0].key_hash != key.as_bytes());

    let ttl = Duration::from_millis(300);
    let closed = Authenticator::new(store.clone(), false, Some("master-secret".into()), ttl, Duration::from_secs(60));
    let caller = closed.authenticate(&bearer(&key)).await.expect("valid key");
    assert_eq!(caller.tenant.as_deref(), Some("acme"));
    assert_eq!(caller.key_id, Some(record.id));
    assert_eq!(caller.key.as_ref().and_then(|k| k.rpm), Some(60));
    assert!(caller.may_use("m1") && caller.may_use("auto") && !caller.may_use("m2"));
    assert!(closed.authenticate(&bearer("master-secret")).await.expect("master").master);
    assert!(matches!(closed.authenticate(&HeaderMap::new()).await, Err(Error::Unauthorized)));
    assert!(matches!(closed.authenticate(&bearer("sk-sy-nope")).await, Err(Error::Unauthorized)));
    assert!(matches!(closed.authenticate(&bearer("something-else")).await, Err(Error::Unauthorized)));

    // Open access still attributes a valid key; anything else is anonymous.
    let open = Authenticator::new(store.clone(), true, None, ttl, Duration::from_secs(60));
    assert_eq!(open.authenticate(&bearer(&key)).await.expect("open").tenant.as_deref(), Some("acme"));
    assert_eq!(open.authenticate(&HeaderMap::new()).await.expect("open").tenant, None);
    assert_eq!(open.authenticate(&bearer("sk-openai-style")).await.expect("open").tenant, None);

    // Revocation: honoured once the cached lookup is older than the TTL.
    assert!(store.set_key_enabled(record.id, false).await.expect("revoke"));
    assert!(!store.set_key_enabled(Uuid::now_v7(), false).await.expect("revoke unknown"));
    assert!(closed.authenticate(&bearer(&key)).await.is_ok(), "still cached");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(matches!(closed.authenticate(&bearer(&key)).await, Err(Error::Unauthorized)));
    assert_eq!(open.authenticate(&bearer(&key)).await.expect("open").tenant, None);
    let listed = store.list_keys().await.expect("list");
    assert!(!listed[0].enabled);

    // An update changes only what it names; null removes a limit or the allow-list.
    let change = KeyUpdate { rpm: Some(None), tpm: Some(Some(5)), models: Some(None), ..KeyUpdate::default() };
    let updated = update_key(store, record.id, change).await.expect("update").expect("key exists");
    assert_eq!((updated.rpm, updated.tpm, updated.budget_usd), (None, Some(5), Some(12.5)));
    assert_eq!(updated.models, ModelAllowList(None));
    let only = KeyUpdate { models: Some(Some(vec!["m2".into()])), ..KeyUpdate::default() };
    assert_eq!(update_key(store, record.id, only).await.expect("update").expect("key").models.0, Some(vec!["m2".to_owned()]));
    assert_eq!(update_key(store, Uuid::now_v7(), KeyUpdate { tpm: Some(Some(1)), ..KeyUpdate::default() }).await.expect("update"), None);
    assert!(matches!(update_key(store, record.id, KeyUpdate::default()).await, Err(Error::InvalidRequest { .. })));
    let zero = KeyUpdate { rpm: Some(Some(0)), ..KeyUpdate::default() };
    assert!(matches!(update_key(store, record.id, zero).await, Err(Error::InvalidRequest { param: Some("rpm"), .. })));
}

#[tokio::test]
async fn keys_create_authenticate_revoke_on_postgres() {
    let (_db, store) = postgres().await;
    keys_create_authenticate_revoke(&store).await;
}

#[tokio::test]
async fn keys_create_authenticate_revoke_on_sqlite() {
    let (_dir, store) = sqlite().await;
    keys_create_authenticate_revoke(&store).await;
}

/// A key checked while the database was up keeps working while it is down (stale TTL), and a
/// key never seen gets a 503, not a 401.
#[tokio::test]
async fn cached_keys_survive_a_database_outage() {
    let db = TestPg::create().await;
    let proxy = store_support::TcpProxy::start(store_support::pg_addr()).await;
    let store = Store::connect(&db.url_via(proxy.addr), 2).expect("url");
    store.migrate().await.expect("migrate");
    let (_, key) = create_key(&store, NewKey { tenant: "acme".into(), ..NewKey::default() }).await.expect("key");
    let (_, unseen) = create_key(&store, NewKey { tenant: "other".into(), ..NewKey::default() }).await.expect("key");
    let auth = Authenticator::new(store.clone(), false, None, Duration::from_millis(50), Duration::from_secs(60));
    assert!(auth.authenticate(&bearer(&key)).await.is_ok());
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let caller = auth.authenticate(&bearer(&key)).await.expect("stale entry used");
    assert_eq!(caller.tenant.as_deref(), Some("acme"));
    let error = auth.authenticate(&bearer(&unseen)).await.expect_err("database down");
    assert_eq!(error.status().as_u16(), 503);
    proxy.restore().await;
    assert!(auth.authenticate(&bearer(&unseen)).await.is_ok());
    store.close().await;
}

async fn cache_entries_round_trip(store: &Store) {
    use cache::{CachedAnswer, StoredEntry};
    let entry = |key: u8, expires_at_ms: u64, semantic: bool| StoredEntry {
        exact_key: [key; 32],
        scope: semantic.then_some([key.wrapping_add(100); 32]),
        query: semantic.then(|| format!("question {key}?")),
        embedding: semantic.then(|| vec![0.25, -0.5, 1.0e-7]),
        answer: CachedAnswer {
            model: "m".into(),
            json: Some(format!(r#"{{"id":"c{key}","choices":[]}}"#)),
            chunks: semantic.then(|| vec![r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#.to_owned()]),
            usage_chunk: None,
        },
        expires_at_ms,
    };
    let now = 1_700_000_000_000u64;
    store.save_cache_entry(&entry(1, now + 60_000, true), Some("acme"), now).await.expect("save");
    store.save_cache_entry(&entry(2, now + 60_000, false), None, now).await.expect("save");
    store.save_cache_entry(&entry(3, now - 1, false), None, now).await.expect("save expired");
    // Saving the same key again replaces the entry.
    store.save_cache_entry(&entry(2, now + 120_000, false), None, now + 1).await.expect("replace");
    let mut loaded = store.load_cache_entries(now, 0).await.expect("load");
    loaded.sort_by_key(|(e, _)| e.exact_key);
    assert_eq!(loaded.len(), 2, "the expired entry is not loaded");
    let ((first, first_written), (second, second_written)) = (&loaded[0], &loaded[1]);
    assert_eq!((*first_written, *second_written), (now, now + 1), "each with the time it was written");
    let original = entry(1, now + 60_000, true);
    assert_eq!(first.exact_key, original.exact_key);
    assert_eq!(first.scope, original.scope);
    assert_eq!(first.query, original.query);
    assert_eq!(first.embedding, original.embedding);
    assert_eq!(first.answer, original.answer);
    assert_eq!(first.expires_at_ms, original.expires_at_ms);
    assert_eq!((second.scope, second.expires_at_ms), (None, now + 120_000));
    // Only what was written since a time: what a replica's refresh reads.
    let since: Vec<u8> =
        store.load_cache_entries(now, now + 1).await.expect("load since").iter().map(|(e, _)| e.exact_key[0]).collect();
    assert_eq!(since, [2]);
    assert_eq!(store.purge_cache_entries(now).await.expect("purge"), 1);
    assert_eq!(store.purge_cache_entries(now + 200_000).await.expect("purge"), 2);
    assert!(store.load_cache_entries(now, 0).await.expect("load").is_empty());
}

#[tokio::test]
async fn cache_entries_round_trip_on_postgres() {
    let (_db, store) = postgres().await;
    cache_entries_round_trip(&store).await;
}

#[tokio::test]
async fn cache_entries_round_trip_on_sqlite() {
    let (_dir, store) = sqlite().await;
    cache_entries_round_trip(&store).await;
}

/// Wrong-hit bound evidence comes back oldest first, as it was kept.
async fn calibration_round_trip(store: &Store) {
    use gateway::store::cache_entries::CalibrationRecord;
    assert!(store.load_calibration().await.expect("load").is_empty());
    let record = |scope: &str, score: f64, wrong: bool, evidence: &str| CalibrationRecord {
        scope: scope.into(),
        score,
        wrong,
        evidence: evidence.into(),
    };
    let kept = [record("all", 0.93, false, "audit"), record("tenant:acme", 0.875, true, "feedback"), record("all", 0.99, false, "audit")];
    for (i, r) in kept.iter().enumerate() {
        store.save_calibration(r, 1_000 + i as u64).await.expect("save");
    }
    assert_eq!(store.load_calibration().await.expect("load"), kept);
}

#[tokio::test]
async fn calibration_evidence_round_trips_on_postgres() {
    let (_db, store) = postgres().await;
    calibration_round_trip(&store).await;
}

#[tokio::test]
async fn calibration_evidence_round_trips_on_sqlite() {
    let (_dir, store) = sqlite().await;
    calibration_round_trip(&store).await;
}

/// The outcome row is one contract: what the gateway writes, training reads back field for
/// field, and a `candidates` value training does not know is an error, not a silent zero.
async fn training_reads_what_the_gateway_writes(store: &Store, url: &str) {
    let full = full_row();
    let minimal = minimal_row();
    store.insert_rows(&[full.clone(), minimal.clone()]).await.expect("insert");
    store
        .insert_feedback(&Feedback { request_id: full.id, score: 0.75, source: "user".into(), comment: None, created_at: now_micros() })
        .await
        .expect("feedback");
    let logged = training::db::load_logged(url, None).await.expect("training reads the log");
    assert_eq!(logged.len(), 2);
    let read = logged.iter().find(|r| r.id == full.id.simple().to_string()).expect("full row read");
    assert_eq!(*read, training::db::LoggedRequest::from_outcome(full.clone(), Some(0.75), 1));
    let decision = full.candidates.clone().expect("decision");
    assert_eq!(read.candidates.len(), decision.scores.len());
    for (got, sent) in read.candidates.iter().zip(&decision.scores) {
        assert_eq!((got.model.as_str(), got.quality, got.utility), (sent.model.as_str(), sent.quality, sent.utility));
        assert_eq!(got.price.map(|p| p.output_usd_per_mtok), Some(sent.output_usd_per_mtok));
    }
    assert_eq!(read.tradeoff.map(|t| t.to_string()), decision.tradeoff);
    assert_eq!(read.embedding.as_deref(), Some(&[0.1f32, -0.2, 0.3, 1.0e-7, -4.5][..]));
    let bare = logged.iter().find(|r| r.id == minimal.id.simple().to_string()).expect("minimal row read");
    assert_eq!((bare.feedback, bare.feedback_count, bare.candidates.len()), (None, 0, 0));

    // A field renamed on one side only: training refuses the log instead of reading zeros.
    let mut renamed = full_row();
    let text = serde_json::to_string(&renamed.candidates).expect("json").replace("\"utility\"", "\"utility_score\"");
    renamed.candidates = None;
    store.insert_rows(&[renamed.clone()]).await.expect("insert");
    let sql = if url.starts_with("postgres") {
        format!("UPDATE request_log SET candidates = '{text}'::jsonb WHERE id = '{}'", renamed.id)
    } else {
        format!("UPDATE request_log SET candidates = '{text}' WHERE id = x'{}'", renamed.id.simple())
    };
    execute(url, &sql).await;
    let error = training::db::load_logged(url, None).await.expect_err("an unknown field is an error");
    assert!(error.to_string().contains("utility"), "{error}");
}

#[tokio::test]
async fn training_reads_what_the_gateway_writes_on_postgres() {
    let (db, store) = postgres().await;
    training_reads_what_the_gateway_writes(&store, &db.url).await;
}

#[tokio::test]
async fn training_reads_what_the_gateway_writes_on_sqlite() {
    let (dir, store) = sqlite().await;
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    training_reads_what_the_gateway_writes(&store, &url).await;
}

async fn execute(url: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        conn.execute(sql).await.expect("update");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        conn.execute(sql).await.expect("update");
    }
}

/// The page size the file was made with, read by SQLite itself.
fn page_size(path: &std::path::Path) -> i64 {
    let connection = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open the file");
    connection.query_row("PRAGMA page_size", [], |row| row.get(0)).expect("page size")
}

#[tokio::test]
async fn a_new_sqlite_database_has_16k_pages_and_an_existing_one_keeps_its_own() {
    let (dir, store) = sqlite().await;
    store.insert_rows(&[full_row()]).await.expect("insert");
    assert_eq!(page_size(&dir.path().join("log.db")), 16 * 1024);

    // A file made before (4 KB pages, WAL) migrates and takes rows as it is.
    let old = dir.path().join("old.db");
    {
        let connection = rusqlite::Connection::open(&old).expect("create");
        connection.pragma_update(None, "page_size", 4096).expect("page size");
        connection.pragma_update(None, "journal_mode", "wal").expect("wal");
        connection.execute_batch("CREATE TABLE made_before (x INTEGER)").expect("table");
    }
    let store = Store::connect(&format!("sqlite://{}", old.display()), 2).expect("sqlite url");
    store.migrate().await.expect("migrate the old file");
    let row = full_row();
    store.insert_rows(std::slice::from_ref(&row)).await.expect("insert");
    assert_eq!(store.fetch_row(row.id).await.expect("fetch"), Some(row));
    assert_eq!(page_size(&old), 4096);
}
