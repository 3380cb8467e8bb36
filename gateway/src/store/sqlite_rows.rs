//! Outcome rows into an SQLite file on a connection and thread of their own.
//!
//! Why not the sqlx pool: sqlx turns a batch into one multi-row statement whose argument
//! values it builds and owns on the async side (a copy of every id and string per row, on the
//! serving runtime), then hands it to the connection's worker thread. Here one prepared
//! single-row insert is stepped per row inside one transaction, binding each field in place,
//! on a thread that runs as nice as the pool's. In `bench/ab.sh` the log's CPU per request
//! fell by about half; SQLite's own B-tree and WAL work is the same either way.
//! Same SQL semantics: a batch is all or nothing, ids already stored are skipped, and values
//! are stored exactly as sqlx stores them (so reads through sqlx see the same rows).
//!
//! Only for a database file: an in-memory database (`sqlite::memory:`) lives inside the pool's
//! connections, so those rows keep going through sqlx.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chrono::SecondsFormat;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{LogRow, LOG_COLUMNS};
use crate::error::Error;

/// How long an insert waits for another writer (feedback, cache entries) to release the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

struct Job {
    rows: Arc<Vec<LogRow>>,
    reply: oneshot::Sender<Result<(), InsertError>>,
}

/// The async side of the insert thread; cheap to clone. The thread ends when the last clone
/// is dropped.
#[derive(Clone)]
pub(super) struct SqliteRowInserter {
    jobs: mpsc::Sender<Job>,
}

impl SqliteRowInserter {
    /// Starts the insert thread for the database file `path`. The file is opened at the first
    /// batch (it exists by then: the pool created and migrated it) and again after a failure.
    pub(super) fn spawn(path: PathBuf) -> Result<Self, Error> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("{}log", super::SQLITE_THREAD_PREFIX))
            .spawn(move || {
                super::lower_sqlite_thread_priority();
                let mut connection = None;
                while let Ok(job) = inbox.recv() {
                    let result = insert_batch(&mut connection, &path, &job.rows);
                    if result.is_err() {
                        // Reopen next time: the file may have been replaced or the handle broken.
                        connection = None;
                    }
                    // The rows go back to the writer before the answer, so that it usually
                    // holds the only reference again.
                    drop(job.rows);
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the SQLite log thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Inserts `rows` in one transaction. Errors look like the pool's (`is_row_error` tells a
    /// refused row from an unusable database).
    pub(super) async fn insert(&self, rows: Arc<Vec<LogRow>>) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { rows, reply })
            .map_err(|_| Error::Internal("the SQLite log thread has stopped".into()))?;
        match answer.await {
            Ok(result) => result.map_err(|e| Error::Database {
                context: "writing the outcome log",
                source: Arc::new(sqlx::Error::Database(Box::new(e))),
            }),
            Err(_) => Err(Error::Internal("the SQLite log thread has stopped".into())),
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // No CREATE: the pool made the file and its tables; a missing file is an error here.
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // As the pool's connections: WAL (a property of the file, set by the pool already),
    // commits without fsync, statement journals in memory.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(connection)
}

static INSERT_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=LOG_COLUMNS.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO request_log ({}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
        LOG_COLUMNS.join(", "),
        placeholders.join(", ")
    )
});

fn insert_batch(connection: &mut Option<Connection>, path: &Path, rows: &[LogRow]) -> Result<(), InsertError> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(open(path).map_err(InsertError)?),
    };
    let tx = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(InsertError)?;
    {
        let mut insert = tx.prepare_cached(&INSERT_ONE).map_err(InsertError)?;
        for row in rows {
            let candidates = row.candidates.as_ref().map(serde_json::to_string).transpose().map_err(|e| {
                InsertError(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
            })?;
            insert
                .execute(params![
                    &row.id.as_bytes()[..],
                    // sqlx's encoding of a `DateTime<Utc>` for SQLite, so that reads and
                    // `created_at >= ?` comparisons treat both writers' rows alike.
                    row.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                    row.tenant.as_deref(),
                    row.key_id.as_ref().map(|id| &id.as_bytes()[..]),
                    row.route.as_deref(),
                    row.provider.as_str(),
                    row.model.as_str(),
                    row.stream,
                    candidates,
                    row.propensity,
                    row.checkpoint_version.as_deref(),
                    row.shadow_choice.as_deref(),
                    row.prompt_hash.as_deref(),
                    row.embedding.as_deref(),
                    row.prompt_text.as_deref(),
                    row.answer_text.as_deref(),
                    row.prompt_tokens,
                    row.completion_tokens,
                    row.cost_usd,
                    row.latency_ms,
                    row.first_token_ms,
                    row.status,
                    row.error_class.as_deref(),
                    row.cache_result.as_deref(),
                ])
                .map_err(InsertError)?;
        }
    }
    tx.commit().map_err(InsertError)
}

/// A failed insert, shaped as a sqlx database error so that the writer's handling (spill and
/// retry, or set a refused row aside) is the same for both paths.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InsertError(rusqlite::Error);

impl InsertError {
    fn extended_code(&self) -> Option<i32> {
        match &self.0 {
            rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
            _ => None,
        }
    }
}

impl sqlx::error::DatabaseError for InsertError {
    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message,
            _ => "SQLite insert failed",
        }
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.extended_code().map(|code| Cow::Owned(code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        use sqlx::error::ErrorKind;
        match self.extended_code() {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => ErrorKind::UniqueViolation,
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            // Any other constraint (a trigger's RAISE, …) refuses the row too.
            Some(code) if code & 0xff == ffi::SQLITE_CONSTRAINT => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(extended_code: i32) -> Error {
        let failure = rusqlite::ffi::Error::new(extended_code);
        Error::Database {
            context: "test",
            source: Arc::new(sqlx::Error::Database(Box::new(InsertError(rusqlite::Error::SqliteFailure(failure, None))))),
        }
    }

    #[test]
    fn refused_rows_are_told_from_an_unusable_database() {
        use rusqlite::ffi;
        for code in [ffi::SQLITE_CONSTRAINT_NOTNULL, ffi::SQLITE_CONSTRAINT_CHECK, ffi::SQLITE_CONSTRAINT_TRIGGER] {
            assert!(super::super::is_row_error(&failed(code)), "constraint {code} refuses the row");
        }
        for code in [ffi::SQLITE_BUSY, ffi::SQLITE_IOERR_WRITE, ffi::SQLITE_CANTOPEN, ffi::SQLITE_READONLY, ffi::SQLITE_FULL] {
            assert!(!super::super::is_row_error(&failed(code)), "{code} is the database's state, not the row's");
        }
    }
}
