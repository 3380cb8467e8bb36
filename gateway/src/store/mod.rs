//! The outcome log, feedback and virtual keys: what the gateway remembers.
//!
//! One logical schema (`migrations/postgres`, `migrations/sqlite`) behind the [`LogStore`]
//! trait, with a Postgres implementation for production and an embedded SQLite one so that
//! the no-config demo needs no server. [`Store`] picks one at run time from the URL.
//!
//! The request path never waits on the database: it hands finished rows to the
//! [`writer::LogWriter`], which batches them, and spills them to a local file while the
//! database is unreachable. Key checks go through the cache in [`keys::Authenticator`].

pub mod cache_entries;
pub mod feedback;
pub mod keys;
mod pg_copy;
mod spill;
mod sqlite_rows;
pub mod writer;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::error::Error;

pub use keys::{ApiKey, Authenticator, Caller, KeyUpdate, ModelAllowList, NewKey};
pub use writer::{LogHandle, LogWriter, WriterConfig, WriterStats};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a pool waits for a connection. Short, so that a dead database turns into a
/// spilled batch or a 503 quickly instead of a stuck writer or request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// One row of the outcome log, as stored (and as written to the spill file): the typed
/// contract shared with training.
pub use router_model::outcome::{embedding_from_bytes, embedding_to_bytes, OutcomeRow as LogRow, COLUMNS as LOG_COLUMNS};
pub use router_model::outcome::{DecisionRecord, FailedAttempt, ScoredCandidate};

/// Feedback on one request: 0 is bad, 1 is good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Feedback {
    pub request_id: Uuid,
    pub score: f64,
    /// Who gave it (`user`, `api`, `eval`, …).
    pub source: String,
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The current time at the precision both databases keep (microseconds), so that a record
/// returned by a create call equals the one read back.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(chrono::TimeDelta::microseconds(1)).unwrap_or(now)
}

/// When the request with this id arrived, read from the id itself: a UUIDv7 begins with its
/// creation time in Unix milliseconds. The outcome log's `created_at` is this instant, so that a
/// time window can be read through the primary key (see [`first_id_of_window`]) and the log
/// needs no second index on time. `None` for ids of other versions.
pub fn arrival_of(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let b = id.as_bytes();
    let millis = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    DateTime::from_timestamp_millis(i64::try_from(millis).ok()?)
}

/// Rows logged before `created_at` was its id's own time have a `created_at` later than the id
/// by the time spent before routing (milliseconds, seconds under a backlog). A minute's leeway
/// keeps them in their windows at the cost of reading one more minute of rows.
const ID_TIME_LEEWAY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// A lower bound on the id of every row with `created_at >= since`: time-window queries filter
/// `id >= first_id_of_window(since) AND created_at >= since`, so that the primary key's index
/// finds the window and `created_at` trims its edge exactly.
pub fn first_id_of_window(since: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from((since - ID_TIME_LEEWAY).timestamp_millis()).unwrap_or(0).min((1 << 48) - 1);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// What the gateway stores. Postgres and SQLite implement it with the same SQL where the
/// dialects agree; [`Store`] dispatches between them.
pub trait LogStore: Send + Sync {
    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Cheap round trip, for `/ready`.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Inserts rows in multi-row statements, all or nothing. Rows whose id is already stored
    /// are skipped, which makes replaying a spilled batch safe when an earlier attempt did
    /// commit but its answer was lost.
    fn insert_rows(&self, rows: &[LogRow]) -> impl Future<Output = Result<(), Error>> + Send;
    fn fetch_row(&self, id: Uuid) -> impl Future<Output = Result<Option<LogRow>, Error>> + Send;
    fn request_exists(&self, id: Uuid) -> impl Future<Output = Result<bool, Error>> + Send;
    /// The tenant of a logged request: `None` when no row has that id, `Some(None)` when the
    /// request was made without a tenant (open access or the master key).
    fn request_tenant(&self, id: Uuid) -> impl Future<Output = Result<Option<Option<String>>, Error>> + Send;
    fn count_rows(&self) -> impl Future<Output = Result<i64, Error>> + Send;
    /// Up to `limit` answered requests, newest first, with their prompt and answer text and
    /// no rating from `source` yet: what `switchyard judge` labels next.
    fn unrated_answers(&self, source: &str, limit: i64) -> impl Future<Output = Result<Vec<(Uuid, String, String)>, Error>> + Send;
    fn insert_feedback(&self, feedback: &Feedback) -> impl Future<Output = Result<(), Error>> + Send;
    fn feedback_for(&self, request_id: Uuid) -> impl Future<Output = Result<Vec<Feedback>, Error>> + Send;
    fn insert_key(&self, key: &ApiKey) -> impl Future<Output = Result<(), Error>> + Send;
    fn key_by_hash(&self, hash: &[u8]) -> impl Future<Output = Result<Option<ApiKey>, Error>> + Send;
    fn list_keys(&self) -> impl Future<Output = Result<Vec<ApiKey>, Error>> + Send;
    /// Enables or disables a key; `false` when no key has that id.
    fn set_key_enabled(&self, id: Uuid, enabled: bool) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Applies the fields `update` gives; `false` when no key has this id.
    fn update_key(&self, id: Uuid, update: &KeyUpdate) -> impl Future<Output = Result<bool, Error>> + Send;
}

fn db_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database {
        context,
        source: Arc::new(source),
    }
}

/// Binds one row's values in [`LOG_COLUMNS`] order (SQLite's multi-row `VALUES`).
macro_rules! push_row {
    ($builder:expr, $row:expr) => {{
        let row: &LogRow = $row;
        $builder
            .push_bind(row.id)
            .push_bind(row.created_at)
            .push_bind(row.tenant.as_deref())
            .push_bind(row.key_id)
            .push_bind(row.route.as_deref())
            .push_bind(row.provider.as_str())
            .push_bind(row.model.as_str())
            .push_bind(row.stream)
            .push_bind(row.candidates.as_ref().map(Json))
            .push_bind(row.propensity)
            .push_bind(row.checkpoint_version.as_deref())
            .push_bind(row.shadow_choice.as_deref())
            .push_bind(row.prompt_hash.as_deref())
            .push_bind(row.embedding.as_deref())
            .push_bind(row.prompt_text.as_deref())
            .push_bind(row.answer_text.as_deref())
            .push_bind(row.prompt_tokens)
            .push_bind(row.completion_tokens)
            .push_bind(row.cost_usd)
            .push_bind(row.latency_ms)
            .push_bind(row.first_token_ms)
            .push_bind(row.status)
            .push_bind(row.error_class.as_deref())
            .push_bind(row.cache_result.as_deref());
    }};
}

/// One implementation of [`LogStore`] per database. The SQL is shared; `QueryBuilder` writes
/// the placeholders each dialect wants (`$1` or `?`).
macro_rules! sql_store {
    ($(#[$meta:meta])* $name:ident, $db:ty, $pool:ty, $migrator:expr, $rows_per_statement:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            /// SQLite only: the database file, when the database is one (not in memory).
            file: Option<std::path::PathBuf>,
        }

        impl $name {
            pub fn new(pool: $pool) -> Self {
                Self { pool, file: None }
            }

            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            /// SQLite: the database file, `None` when the database is in memory. Postgres: `None`.
            pub fn file(&self) -> Option<&std::path::Path> {
                self.file.as_deref()
            }
        }

        impl LogStore for $name {
            async fn migrate(&self) -> Result<(), Error> {
                // Two processes migrating one fresh SQLite file race on the first migration;
                // the loser sees the winner's work when it tries again.
                let mut attempt: u64 = 0;
                loop {
                    match $migrator.run(&self.pool).await {
                        Ok(()) => return Ok(()),
                        Err(e) if attempt < 3 => {
                            attempt += 1;
                            tracing::debug!(error = %e, attempt, "migration failed, retrying");
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        Err(e) => return Err(db_error("running migrations")(e.into())),
                    }
                }
            }

            async fn ping(&self) -> Result<(), Error> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(db_error("pinging the database"))
            }

            async fn insert_rows(&self, rows: &[LogRow]) -> Result<(), Error> {
                let context = "writing the outcome log";
                if rows.is_empty() {
                    return Ok(());
                }
                if rows.len() <= $rows_per_statement {
                    let mut conn = self.pool.acquire().await.map_err(db_error(context))?;
                    return Self::insert_chunk(&mut conn, rows).await.map_err(db_error(context));
                }
                let mut tx = self.pool.begin().await.map_err(db_error(context))?;
                for chunk in rows.chunks($rows_per_statement) {
                    Self::insert_chunk(&mut tx, chunk).await.map_err(db_error(context))?;
                }
                tx.commit().await.map_err(db_error(context))
            }

            async fn fetch_row(&self, id: Uuid) -> Result<Option<LogRow>, Error> {
                let mut query = QueryBuilder::<$db>::new("SELECT ");
                query.push(LOG_COLUMNS.join(", ")).push(" FROM request_log WHERE id = ").push_bind(id);
                query
                    .build_query_as::<LogRow>()
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("reading the outcome log"))
            }

            async fn request_exists(&self, id: Uuid) -> Result<bool, Error> {
                let mut query = QueryBuilder::<$db>::new("SELECT 1 FROM request_log WHERE id = ");
                query.push_bind(id);
                let found = query
                    .build()
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("reading the outcome log"))?;
                Ok(found.is_some())
            }

            async fn request_tenant(&self, id: Uuid) -> Result<Option<Option<String>>, Error> {
                let mut query = QueryBuilder::<$db>::new("SELECT tenant FROM request_log WHERE id = ");
                query.push_bind(id);
                query
                    .build_query_scalar::<Option<String>>()
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("reading the outcome log"))
            }

            async fn unrated_answers(&self, source: &str, limit: i64) -> Result<Vec<(Uuid, String, String)>, Error> {
                let mut query = QueryBuilder::<$db>::new(
                    "SELECT r.id, r.prompt_text, r.answer_text FROM request_log r \
                     WHERE r.status = 200 AND r.prompt_text IS NOT NULL AND r.answer_text IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = r.id AND f.source = ",
                );
                query.push_bind(source).push(") ORDER BY r.id DESC LIMIT ").push_bind(limit);
                query
                    .build_query_as::<(Uuid, String, String)>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("reading answers to judge"))
            }

            async fn count_rows(&self) -> Result<i64, Error> {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM request_log")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("counting the outcome log"))
            }

            async fn insert_feedback(&self, feedback: &Feedback) -> Result<(), Error> {
                let mut query = QueryBuilder::<$db>::new(
                    "INSERT INTO feedback (request_id, score, source, comment, created_at) ",
                );
                query.push_values([feedback], |mut values, f| {
                    values
                        .push_bind(f.request_id)
                        .push_bind(f.score)
                        .push_bind(f.source.as_str())
                        .push_bind(f.comment.as_deref())
                        .push_bind(f.created_at);
                });
                query
                    .build()
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(db_error("writing feedback"))
            }

            async fn feedback_for(&self, request_id: Uuid) -> Result<Vec<Feedback>, Error> {
                let mut query = QueryBuilder::<$db>::new(
                    "SELECT request_id, score, source, comment, created_at FROM feedback WHERE request_id = ",
                );
                query.push_bind(request_id).push(" ORDER BY id");
                query
                    .build_query_as::<Feedback>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("reading feedback"))
            }

            async fn insert_key(&self, key: &ApiKey) -> Result<(), Error> {
                let mut query = QueryBuilder::<$db>::new(
                    "INSERT INTO api_keys (id, key_hash, tenant, name, rpm, tpm, budget_usd, enabled, created_at, models) ",
                );
                query.push_values([key], |mut values, k| {
                    values
                        .push_bind(k.id)
                        .push_bind(k.key_hash.as_slice())
                        .push_bind(k.tenant.as_str())
                        .push_bind(k.name.as_deref())
                        .push_bind(k.rpm)
                        .push_bind(k.tpm)
                        .push_bind(k.budget_usd)
                        .push_bind(k.enabled)
                        .push_bind(k.created_at)
                        .push_bind(k.models.to_column());
                });
                query
                    .build()
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(db_error("creating a key"))
            }

            async fn key_by_hash(&self, hash: &[u8]) -> Result<Option<ApiKey>, Error> {
                let mut query = QueryBuilder::<$db>::new(keys::SELECT_KEYS);
                query.push(" WHERE key_hash = ").push_bind(hash);
                query
                    .build_query_as::<ApiKey>()
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("looking up a key"))
            }

            async fn list_keys(&self) -> Result<Vec<ApiKey>, Error> {
                let mut query = QueryBuilder::<$db>::new(keys::SELECT_KEYS);
                query.push(" ORDER BY created_at, id");
                query
                    .build_query_as::<ApiKey>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("listing keys"))
            }

            async fn set_key_enabled(&self, id: Uuid, enabled: bool) -> Result<bool, Error> {
                let mut query = QueryBuilder::<$db>::new("UPDATE api_keys SET enabled = ");
                query.push_bind(enabled).push(" WHERE id = ").push_bind(id);
                let done = query
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("updating a key"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn update_key(&self, id: Uuid, update: &KeyUpdate) -> Result<bool, Error> {
                let mut query = QueryBuilder::<$db>::new("UPDATE api_keys SET ");
                let mut set = query.separated(", ");
                if let Some(rpm) = update.rpm {
                    set.push("rpm = ").push_bind_unseparated(rpm);
                }
                if let Some(tpm) = update.tpm {
                    set.push("tpm = ").push_bind_unseparated(tpm);
                }
                if let Some(budget) = update.budget_usd {
                    set.push("budget_usd = ").push_bind_unseparated(budget);
                }
                if let Some(models) = &update.models {
                    set.push("models = ").push_bind_unseparated(keys::ModelAllowList(models.clone()).to_column());
                }
                query.push(" WHERE id = ").push_bind(id);
                let done = query
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("updating a key"))?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

sql_store!(
    /// Postgres: the production store. A batch is one `COPY` (no parameter limit), so it is
    /// never split; the bound only keeps a runaway spill replay from becoming one statement.
    PgStore, Postgres, PgPool, POSTGRES_MIGRATIONS, 1_000_000
);
sql_store!(
    /// Embedded SQLite: the default, so the gateway runs with nothing else installed.
    SqliteStore, Sqlite, SqlitePool, SQLITE_MIGRATIONS, SQLITE_MAX_BINDS / LOG_COLUMNS.len()
);

/// Page size of a SQLite database the gateway creates (an existing file keeps its own). A
/// routed request's log row carries its 1.5 KB embedding: with 4 KB pages two rows fill a page
/// and every batch writes (and checkpoints) many half-used pages; with 16 KB pages the log
/// writer spent about half the CPU per routed row (`log_writer` bench: 25-30 -> 15-16 µs) and
/// the same on passthrough rows.
const SQLITE_PAGE_SIZE: u32 = 16 * 1024;

/// Name prefix of sqlx's SQLite worker threads (one per connection), so they can be found.
const SQLITE_THREAD_PREFIX: &str = "sy-sqlite-";
/// How much nicer than the gateway's own threads those threads run. Embedded SQLite does its
/// inserts, WAL writes and checkpoints on the gateway's own cores; at the same priority a batch
/// insert preempts request handlers and shows up in their tail latency (p99 added latency
/// 1.6 ms vs 0.8 ms reniced, in `bench/load.sh` on 2 cores). The log can wait: rows queue in
/// the writer's channel. Relative, not absolute: a gateway run at nice -10 with its SQLite
/// threads at 10 (a weight ratio of ~87) had every insert chopped up by request wake-ups —
/// 23,000 context switches a second and half the throughput on one core, against 500 and
/// 16% less than with the log off at a gap of 10.
const SQLITE_THREAD_NICER_BY: i32 = 10;

/// Renices every SQLite worker thread of this process (idempotent; runs after each new
/// connection, whose thread exists by then). Linux only; elsewhere a no-op.
fn lower_sqlite_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
        // SAFETY: getpriority only reads this thread's niceness. It returns -1 on error too
        // (a valid niceness): at worst the threads end up one step less nice than meant.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let nice = (own + SQLITE_THREAD_NICER_BY).clamp(-20, 19);
        for task in tasks.flatten() {
            let is_sqlite = std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(SQLITE_THREAD_PREFIX));
            let tid = task.file_name().to_str().and_then(|t| t.parse::<libc::id_t>().ok());
            if let (true, Some(tid)) = (is_sqlite, tid) {
                // SAFETY: setpriority takes plain integers; it changes only that thread's
                // scheduling weight.
                let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
                if rc != 0 {
                    tracing::debug!(tid, "could not lower a SQLite thread's priority");
                }
            }
        }
    }
}

/// SQLite's limit on bound parameters in one statement (since 3.32).
const SQLITE_MAX_BINDS: usize = 32_766;

/// `INSERT … SELECT * FROM UNNEST($1::uuid[], …)`: one array per column, so the statement
/// text (and its prepared plan) is the same for every batch size. Since binary `COPY` took
/// over, only for a batch holding an id already stored, which it skips.
static PG_INSERT_UNNEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    const TYPES: [&str; 24] = [
        "uuid", "timestamptz", "text", "uuid", "text", "text", "text", "bool", "jsonb", "float8", "text", "text",
        "text", "bytea", "text", "text", "int8", "int8", "float8", "float8", "float8", "int4", "text", "text",
    ];
    let arrays: Vec<String> = TYPES.iter().enumerate().map(|(i, t)| format!("${}::{t}[]", i + 1)).collect();
    format!(
        "INSERT INTO request_log ({}) SELECT * FROM UNNEST({}) ON CONFLICT (id) DO NOTHING",
        LOG_COLUMNS.join(", "),
        arrays.join(", ")
    )
});

impl PgStore {
    /// Binary `COPY` (see [`pg_copy`]); a batch holding an id already stored goes again
    /// through the `UNNEST` insert, which skips it. One statement for any number of rows, so
    /// a batch is never split across a transaction.
    async fn insert_chunk(conn: &mut sqlx::PgConnection, rows: &[LogRow]) -> Result<(), sqlx::Error> {
        match Self::copy_rows(conn, rows).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Self::insert_skipping_stored(conn, rows).await,
            other => other,
        }
    }

    async fn copy_rows(conn: &mut sqlx::PgConnection, rows: &[LogRow]) -> Result<(), sqlx::Error> {
        let data = pg_copy::encode(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let mut copy = conn.copy_in_raw(&pg_copy::COPY_STATEMENT).await?;
        if let Err(e) = copy.send(data).await {
            // Leaves the connection usable; the send's error is the one worth reporting.
            let _ = copy.abort("the outcome rows could not be sent").await;
            return Err(e);
        }
        copy.finish().await.map(|_| ())
    }

    async fn insert_skipping_stored(conn: &mut sqlx::PgConnection, rows: &[LogRow]) -> Result<(), sqlx::Error> {
        fn column<'a, T>(rows: &'a [LogRow], f: impl Fn(&'a LogRow) -> T) -> Vec<T> {
            rows.iter().map(f).collect()
        }
        sqlx::query(&PG_INSERT_UNNEST)
            .bind(column(rows, |r| r.id))
            .bind(column(rows, |r| r.created_at))
            .bind(column(rows, |r| r.tenant.as_deref()))
            .bind(column(rows, |r| r.key_id))
            .bind(column(rows, |r| r.route.as_deref()))
            .bind(column(rows, |r| r.provider.as_str()))
            .bind(column(rows, |r| r.model.as_str()))
            .bind(column(rows, |r| r.stream))
            .bind(column(rows, |r| r.candidates.as_ref().map(Json)))
            .bind(column(rows, |r| r.propensity))
            .bind(column(rows, |r| r.checkpoint_version.as_deref()))
            .bind(column(rows, |r| r.shadow_choice.as_deref()))
            .bind(column(rows, |r| r.prompt_hash.as_deref()))
            .bind(column(rows, |r| r.embedding.as_deref()))
            .bind(column(rows, |r| r.prompt_text.as_deref()))
            .bind(column(rows, |r| r.answer_text.as_deref()))
            .bind(column(rows, |r| r.prompt_tokens))
            .bind(column(rows, |r| r.completion_tokens))
            .bind(column(rows, |r| r.cost_usd))
            .bind(column(rows, |r| r.latency_ms))
            .bind(column(rows, |r| r.first_token_ms))
            .bind(column(rows, |r| r.status))
            .bind(column(rows, |r| r.error_class.as_deref()))
            .bind(column(rows, |r| r.cache_result.as_deref()))
            .execute(conn)
            .await
            .map(|_| ())
    }
}

impl SqliteStore {
    async fn insert_chunk(conn: &mut sqlx::SqliteConnection, rows: &[LogRow]) -> Result<(), sqlx::Error> {
        let mut query = QueryBuilder::<Sqlite>::new("INSERT INTO request_log (");
        query.push(LOG_COLUMNS.join(", ")).push(") ");
        query.push_values(rows, |mut values, row| push_row!(values, row));
        query.push(" ON CONFLICT (id) DO NOTHING");
        query.build().execute(conn).await.map(|_| ())
    }
}

/// The store the URL names.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

macro_rules! dispatch {
    ($self:expr, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => $call,
            Store::Sqlite($store) => $call,
        }
    };
}

impl Store {
    /// Opens the database `[database] url` names (without migrating it).
    pub fn open(config: &DatabaseConfig) -> Result<Self, Error> {
        Self::connect(&config.resolved_url()?, config.max_connections)
    }

    /// Opens a pool for `url`. Connections are made lazily, so a database that is down at
    /// this moment is an error at first use, not here.
    pub fn connect(url: &str, max_connections: u32) -> Result<Self, Error> {
        let max_connections = max_connections.max(1);
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).map_err(db_error("parsing the database url"))?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options);
            Ok(Self::Postgres(PgStore::new(pool)))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(db_error("parsing the database url"))?
                .thread_name(|id| format!("{SQLITE_THREAD_PREFIX}{id}"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                // Each multi-row insert's statement journal stays in memory: on disk it was a
                // temp file created and unlinked per batch (3,700 of each in a
                // `log_writer` bench run of 3,900 batches).
                .pragma("temp_store", "memory")
                .page_size(SQLITE_PAGE_SIZE);
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            // The log writer opens a file database with a connection of its own.
            let file = (!in_memory).then(|| options.get_filename().to_path_buf());
            let pool = if in_memory {
                // An in-memory database lives as long as one of its connections: keep one.
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                SqlitePoolOptions::new().max_connections(max_connections)
            };
            let pool = pool
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|_, _| {
                    Box::pin(async {
                        lower_sqlite_thread_priority();
                        Ok(())
                    })
                })
                .connect_lazy_with(options);
            Ok(Self::Sqlite(SqliteStore { file, ..SqliteStore::new(pool) }))
        } else {
            Err(Error::Config(format!(
                "[database] url must start with sqlite: or postgres:, got `{}`",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Open and idle connections of the pool (for metrics).
    pub fn pool_usage(&self) -> Option<(u32, usize)> {
        dispatch!(self, s => Some((s.pool().size(), s.pool().num_idle())))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        dispatch!(self, s => s.pool().close().await)
    }
}

impl LogStore for Store {
    async fn migrate(&self) -> Result<(), Error> {
        dispatch!(self, s => s.migrate().await)
    }
    async fn ping(&self) -> Result<(), Error> {
        dispatch!(self, s => s.ping().await)
    }
    async fn insert_rows(&self, rows: &[LogRow]) -> Result<(), Error> {
        dispatch!(self, s => s.insert_rows(rows).await)
    }
    async fn fetch_row(&self, id: Uuid) -> Result<Option<LogRow>, Error> {
        dispatch!(self, s => s.fetch_row(id).await)
    }
    async fn request_exists(&self, id: Uuid) -> Result<bool, Error> {
        dispatch!(self, s => s.request_exists(id).await)
    }
    async fn request_tenant(&self, id: Uuid) -> Result<Option<Option<String>>, Error> {
        dispatch!(self, s => s.request_tenant(id).await)
    }
    async fn unrated_answers(&self, source: &str, limit: i64) -> Result<Vec<(Uuid, String, String)>, Error> {
        dispatch!(self, s => s.unrated_answers(source, limit).await)
    }
    async fn count_rows(&self) -> Result<i64, Error> {
        dispatch!(self, s => s.count_rows().await)
    }
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<(), Error> {
        dispatch!(self, s => s.insert_feedback(feedback).await)
    }
    async fn feedback_for(&self, request_id: Uuid) -> Result<Vec<Feedback>, Error> {
        dispatch!(self, s => s.feedback_for(request_id).await)
    }
    async fn insert_key(&self, key: &ApiKey) -> Result<(), Error> {
        dispatch!(self, s => s.insert_key(key).await)
    }
    async fn key_by_hash(&self, hash: &[u8]) -> Result<Option<ApiKey>, Error> {
        dispatch!(self, s => s.key_by_hash(hash).await)
    }
    async fn list_keys(&self) -> Result<Vec<ApiKey>, Error> {
        dispatch!(self, s => s.list_keys().await)
    }
    async fn set_key_enabled(&self, id: Uuid, enabled: bool) -> Result<bool, Error> {
        dispatch!(self, s => s.set_key_enabled(id, enabled).await)
    }
    async fn update_key(&self, id: Uuid, update: &KeyUpdate) -> Result<bool, Error> {
        dispatch!(self, s => s.update_key(id, update).await)
    }
}

/// Whether a failed write failed because of the rows themselves (a value the database
/// refuses), not because the database is unreachable or misconfigured. Only such batches
/// are split to find the bad row; anything else waits in the spill file and is retried.
pub(crate) fn is_row_error(error: &Error) -> bool {
    let Error::Database { source, .. } = error else {
        return false;
    };
    // A value that cannot be put into the database's format is the row's fault too.
    if matches!(source.as_ref(), sqlx::Error::Encode(_)) {
        return true;
    }
    let Some(db) = source.as_database_error() else {
        return false;
    };
    use sqlx::error::ErrorKind;
    match db.kind() {
        ErrorKind::UniqueViolation
        | ErrorKind::ForeignKeyViolation
        | ErrorKind::NotNullViolation
        | ErrorKind::CheckViolation => true,
        // Postgres class 22: data exception (bad encoding, NUL in text, out of range).
        _ => db.code().is_some_and(|code| code.starts_with("22")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v7_at(t: DateTime<Utc>) -> Uuid {
        let seconds = u64::try_from(t.timestamp()).expect("after 1970");
        Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, t.timestamp_subsec_nanos()))
    }

    #[test]
    fn an_ids_arrival_is_its_millisecond_and_bounds_its_window() {
        let before = now();
        let id = Uuid::now_v7();
        let arrived = arrival_of(id).expect("a v7 id has a time");
        assert!(arrived <= now() && arrived > before - chrono::TimeDelta::milliseconds(1), "{before} {arrived}");
        assert_eq!(arrived.timestamp_subsec_nanos() % 1_000_000, 0, "milliseconds, as the id keeps them");
        assert_eq!(arrival_of(Uuid::from_bytes([0x11; 16])), None, "not a v7 id");

        let since = now() - chrono::TimeDelta::hours(3);
        let first = first_id_of_window(since);
        // A row arriving at the window's start, or just before it as an earlier build logged it
        // (id taken before `created_at`), is above the bound; a row from well before is below.
        assert!(v7_at(since) >= first);
        assert!(v7_at(since - chrono::TimeDelta::seconds(30)) >= first);
        assert!(v7_at(since - chrono::TimeDelta::minutes(2)) < first);
        assert_eq!(arrival_of(v7_at(since)), since.duration_trunc(chrono::TimeDelta::milliseconds(1)).ok());
    }

    #[test]
    fn embedding_bytes_round_trip() {
        let embedding = vec![0.25f32, -1.5, f32::MIN_POSITIVE, 3.0e7];
        let bytes = embedding_to_bytes(&embedding);
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[..4], &0.25f32.to_le_bytes());
        assert_eq!(embedding_from_bytes(&bytes), Some(embedding));
    }

    #[test]
    fn spill_json_round_trips_embedding_as_hex() {
        let row = LogRow {
            id: Uuid::now_v7(),
            created_at: Utc::now(),
            tenant: None,
            key_id: None,
            route: None,
            provider: "p".into(),
            model: "m".into(),
            stream: false,
            candidates: None,
            propensity: None,
            checkpoint_version: None,
            shadow_choice: None,
            prompt_hash: None,
            embedding: Some(vec![0, 1, 0xab, 0xff]),
            prompt_text: None,
            answer_text: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost_usd: None,
            latency_ms: 1.0,
            first_token_ms: None,
            status: 200,
            error_class: None,
            cache_result: None,
        };
        let text = serde_json::to_string(&row).unwrap_or_default();
        assert!(text.contains("\"0001abff\""), "{text}");
        let back: Option<LogRow> = serde_json::from_str(&text).ok();
        assert_eq!(back, Some(row));
    }

    #[test]
    fn unknown_scheme_is_a_config_error() {
        assert!(matches!(Store::connect("mysql://x", 1), Err(Error::Config(_))));
    }
}
