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
//! A row binds only its non-NULL columns (one statement per set of them, see [`insert_sql`]),
//! and SQLite reads its texts in place (see [`StaticInsert`]).
//!
//! Only for a database file: an in-memory database (`sqlite::memory:`) lives inside the pool's
//! connections, so those rows keep going through sqlx.

use std::borrow::Cow;
use std::ffi::{c_int, c_uint};
use std::ptr::NonNull;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{ffi, Connection, OpenFlags};
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
                let mut connection: Option<LogConnection> = None;
                while let Ok(job) = inbox.recv() {
                    let result = match &mut connection {
                        Some(connection) => connection.insert_batch(&job.rows),
                        None => LogConnection::open(&path)
                            .map_err(InsertError)
                            .and_then(|opened| connection.insert(opened).insert_batch(&job.rows)),
                    };
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

/// Columns of a row, in [`LOG_COLUMNS`] order (`column_values` must list each one).
const COLUMN_COUNT: usize = LOG_COLUMNS.len();

/// Which columns a row has values for: bit `i` is `LOG_COLUMNS[i]`.
type ColumnMask = u32;
const _: () = assert!(COLUMN_COUNT <= ColumnMask::BITS as usize, "a bit per column");

/// A row's values as SQLite is handed them, stored exactly as sqlx stores them (so reads
/// through sqlx see the same rows): UUIDs as 16-byte blobs, booleans as integers.
fn column_values<'r>(row: &'r LogRow, created_at: &'r [u8], candidates: Option<&'r str>) -> [Option<ValueRef<'r>>; COLUMN_COUNT] {
    let text = |value: Option<&'r String>| value.map(|v| ValueRef::Text(v.as_bytes()));
    let real = |value: Option<f64>| value.map(ValueRef::Real);
    let integer = |value: Option<i64>| value.map(ValueRef::Integer);
    [
        Some(ValueRef::Blob(&row.id.as_bytes()[..])),
        Some(ValueRef::Text(created_at)),
        text(row.tenant.as_ref()),
        row.key_id.as_ref().map(|id| ValueRef::Blob(&id.as_bytes()[..])),
        text(row.route.as_ref()),
        Some(ValueRef::Text(row.provider.as_bytes())),
        Some(ValueRef::Text(row.model.as_bytes())),
        Some(ValueRef::Integer(i64::from(row.stream))),
        candidates.map(|c| ValueRef::Text(c.as_bytes())),
        real(row.propensity),
        text(row.checkpoint_version.as_ref()),
        text(row.shadow_choice.as_ref()),
        text(row.prompt_hash.as_ref()),
        row.embedding.as_deref().map(ValueRef::Blob),
        text(row.prompt_text.as_ref()),
        text(row.answer_text.as_ref()),
        integer(row.prompt_tokens),
        integer(row.completion_tokens),
        real(row.cost_usd),
        Some(ValueRef::Real(row.latency_ms)),
        real(row.first_token_ms),
        Some(ValueRef::Integer(i64::from(row.status))),
        text(row.error_class.as_ref()),
        text(row.cache_result.as_ref()),
    ]
}

/// Writes `at` into `out` (replacing what it held) as sqlx encodes a `DateTime<Utc>` for
/// SQLite, `to_rfc3339_opts(SecondsFormat::AutoSi, false)`, so that reads and `created_at >= ?`
/// comparisons treat both writers' rows alike. Digits into a template: chrono's general
/// formatter and its allocation were about a twentieth of this thread's instructions per
/// passthrough row (880 of some 15,500). What the template does not cover (a leap second, a
/// year outside 0-9999) goes through chrono itself.
fn write_created_at(at: &DateTime<Utc>, out: &mut Vec<u8>) {
    out.clear();
    let at_utc = at.naive_utc();
    let nanos = at_utc.nanosecond();
    let year = match u32::try_from(at_utc.year()) {
        Ok(year @ 0..=9999) if nanos < 1_000_000_000 => year,
        _ => {
            out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, false).as_bytes());
            return;
        }
    };
    let mut text = *b"0000-00-00T00:00:00.000000000";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], at_utc.month());
    put_digits(&mut text[8..10], at_utc.day());
    put_digits(&mut text[11..13], at_utc.hour());
    put_digits(&mut text[14..16], at_utc.minute());
    put_digits(&mut text[17..19], at_utc.second());
    put_digits(&mut text[20..29], nanos);
    // As `AutoSi`: no fraction, or milli-, micro- or nanoseconds, whichever is exact.
    let fraction_digits = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    let end = if fraction_digits == 0 { 19 } else { 20 + fraction_digits };
    out.extend_from_slice(&text[..end]);
    out.extend_from_slice(b"+00:00");
}

/// Fills `digits` with `value`'s last decimal digits, zero-padded.
fn put_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The insert thread's connection and its prepared inserts.
struct LogConnection {
    /// One insert per set of non-NULL columns met so far (see [`insert_sql`]); a handful in
    /// practice, searched in order. Declared before `connection`: finalized before it closes.
    inserts: Vec<(ColumnMask, StaticInsert)>,
    connection: Connection,
}

/// Distinct column sets kept prepared; past this many, the set starts over.
const MAX_PREPARED_INSERTS: usize = 64;

/// Rows inserted between offers of the CPU to whatever else is runnable. A batch holds up to
/// `batch_interval`'s worth of traffic (1,000 rows at 5,000 req/s, ~2.5 ms of work), and
/// Linux lets a running thread keep its core for a slice when a request handler wakes beside
/// it, however nice the thread is: in `bench/load.sh` the slowest requests recurred at the
/// batch interval, and no longer do. 64 rows are ~150 µs of work; one system call each.
const ROWS_BETWEEN_YIELDS: usize = 64;

impl LogConnection {
    fn open(path: &Path) -> rusqlite::Result<Self> {
        // No CREATE: the pool made the file and its tables; a missing file is an error here.
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        // As the pool's connections: WAL (a property of the file, set by the pool already),
        // commits without fsync, statement journals in memory.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(Self { inserts: Vec::new(), connection })
    }

    /// Inserts `rows` in one transaction: all of them, or none.
    fn insert_batch(&mut self, rows: &[LogRow]) -> Result<(), InsertError> {
        // SAFETY: the handle is only passed to SQLite calls on this thread while `connection`
        // is open (it outlives this call), never closed here.
        let db = unsafe { self.connection.handle() };
        let tx = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(InsertError)?;
        let mut created_at = Vec::with_capacity(64);
        for (i, row) in rows.iter().enumerate() {
            if i > 0 && i % ROWS_BETWEEN_YIELDS == 0 {
                std::thread::yield_now();
            }
            let candidates = row.candidates.as_ref().map(serde_json::to_string).transpose().map_err(|e| {
                InsertError(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
            })?;
            write_created_at(&row.created_at, &mut created_at);
            let values = column_values(row, &created_at, candidates.as_deref());
            let mask = values
                .iter()
                .enumerate()
                .filter(|(_, value)| value.is_some())
                .fold(0, |mask, (i, _)| mask | (1 << i));
            let index = match self.inserts.iter().position(|(m, _)| *m == mask) {
                Some(index) => index,
                None => {
                    if self.inserts.len() >= MAX_PREPARED_INSERTS {
                        self.inserts.clear();
                    }
                    self.inserts.push((mask, StaticInsert::prepare(db, &insert_sql(mask)).map_err(InsertError)?));
                    self.inserts.len() - 1
                }
            };
            self.inserts[index].1.run(db, values.iter().flatten().copied()).map_err(InsertError)?;
        }
        tx.commit().map_err(InsertError)
    }
}

/// The insert for the columns in `mask`. A row binds only the columns it has: a passthrough
/// row leaves about half of them NULL (no embedding, candidates, propensity, shadow choice,
/// ...), and binding a NULL, unbinding the previous value and running the statement's opcodes
/// for a column all cost per row, like a value does.
fn insert_sql(mask: ColumnMask) -> String {
    let columns: Vec<&str> = (0..COLUMN_COUNT).filter(|i| mask & (1 << i) != 0).map(|i| LOG_COLUMNS[i]).collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO request_log ({}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
        columns.join(", "),
        placeholders.join(", ")
    )
}

/// A prepared statement held as SQLite's own handle rather than a rusqlite `Statement`, so
/// that text and blob values are bound with `SQLITE_STATIC`: SQLite reads them in place during
/// the step. rusqlite binds them `SQLITE_TRANSIENT`, which makes SQLite allocate and copy each
/// one first (under its allocator's mutex) and free it at the next bind: about a seventh of
/// this thread's instructions per passthrough row.
struct StaticInsert {
    statement: NonNull<ffi::sqlite3_stmt>,
    /// How many `?N` the statement has: every step is preceded by binding all of them.
    parameters: usize,
}

impl StaticInsert {
    fn prepare(db: *mut ffi::sqlite3, sql: &str) -> rusqlite::Result<Self> {
        let length = c_int::try_from(sql.len()).map_err(|_| sqlite_error(db, ffi::SQLITE_TOOBIG))?;
        let mut statement = std::ptr::null_mut();
        // SAFETY: `db` is an open connection used only by this thread; `sql` is valid for
        // `length` bytes (SQLite reads no further when given a length).
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                length,
                ffi::SQLITE_PREPARE_PERSISTENT as c_uint,
                &mut statement,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(db, rc));
        }
        let statement = NonNull::new(statement).ok_or(rusqlite::Error::InvalidQuery)?;
        // SAFETY: `statement` was just prepared and is not finalized until `drop`.
        let parameters = usize::try_from(unsafe { ffi::sqlite3_bind_parameter_count(statement.as_ptr()) }).unwrap_or(0);
        Ok(Self { statement, parameters })
    }

    /// Binds `values` to `?1`, `?2`, ... and runs the statement once.
    ///
    /// Sound although SQLite keeps the pointers after this returns: it reads bound values
    /// only while stepping, and no step happens here unless every parameter was bound anew
    /// from `values`, which outlive the step.
    fn run<'v>(&mut self, db: *mut ffi::sqlite3, values: impl Iterator<Item = ValueRef<'v>>) -> rusqlite::Result<()> {
        let statement = self.statement.as_ptr();
        let mut bound = 0;
        for value in values {
            bound += 1;
            let index = c_int::try_from(bound).map_err(|_| sqlite_error(db, ffi::SQLITE_RANGE))?;
            let length = |bytes: &[u8]| c_int::try_from(bytes.len()).map_err(|_| sqlite_error(db, ffi::SQLITE_TOOBIG));
            // SAFETY: `statement` is live and reset (or fresh); text and blob pointers are
            // valid for their lengths until the step below has returned (see above).
            let rc = unsafe {
                match value {
                    ValueRef::Null => ffi::sqlite3_bind_null(statement, index),
                    ValueRef::Integer(v) => ffi::sqlite3_bind_int64(statement, index, v),
                    ValueRef::Real(v) => ffi::sqlite3_bind_double(statement, index, v),
                    ValueRef::Text(text) => {
                        ffi::sqlite3_bind_text(statement, index, text.as_ptr().cast(), length(text)?, ffi::SQLITE_STATIC())
                    }
                    ValueRef::Blob(blob) => {
                        ffi::sqlite3_bind_blob(statement, index, blob.as_ptr().cast(), length(blob)?, ffi::SQLITE_STATIC())
                    }
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(sqlite_error(db, rc));
            }
        }
        if bound != self.parameters {
            return Err(rusqlite::Error::InvalidParameterCount(bound, self.parameters));
        }
        // SAFETY: as above; the reset returns the statement to its initial state whatever the
        // step did, so the next row starts clean.
        unsafe {
            let rc = ffi::sqlite3_step(statement);
            let failed = (rc != ffi::SQLITE_DONE).then(|| sqlite_error(db, rc));
            ffi::sqlite3_reset(statement);
            failed.map_or(Ok(()), Err)
        }
    }
}

impl Drop for StaticInsert {
    fn drop(&mut self) {
        // SAFETY: the statement is finalized once, here, before its connection closes
        // (`LogConnection` declares it first).
        unsafe {
            ffi::sqlite3_finalize(self.statement.as_ptr());
        }
    }
}

/// The error SQLite reported on `db` for the result code `rc`, as rusqlite shapes it.
fn sqlite_error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is open; the message is copied before any other call on it.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(db);
        (!text.is_null()).then(|| std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
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

    /// The hand-written `created_at` is chrono's (and so sqlx's) text, for every fraction
    /// `AutoSi` distinguishes, the edges of the day and year, and the fallbacks.
    #[test]
    fn created_at_is_written_as_sqlx_writes_it() {
        use chrono::{NaiveDate, TimeZone};
        let mut text = Vec::new();
        let mut check = |at: DateTime<Utc>| {
            write_created_at(&at, &mut text);
            assert_eq!(String::from_utf8_lossy(&text), at.to_rfc3339_opts(SecondsFormat::AutoSi, false));
        };
        check(Utc::now());
        for nanos in [0, 1, 7, 999, 1_000, 120_000, 999_999, 1_000_000, 5_000_000, 123_456_789, 999_999_999] {
            for (y, mo, d, h, mi, s) in [(2026, 12, 7, 11, 41, 4), (1970, 1, 1, 0, 0, 0), (9999, 12, 31, 23, 59, 59), (1, 2, 3, 4, 5, 6)] {
                let day = NaiveDate::from_ymd_opt(y, mo, d).expect("date");
                let at = day.and_hms_nano_opt(h, mi, s, nanos).expect("time");
                check(Utc.from_utc_datetime(&at));
            }
        }
        // A leap second and years chrono writes its own way.
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31).and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000)).expect("leap");
        check(Utc.from_utc_datetime(&leap));
        for year in [-1, 10_000] {
            let at = NaiveDate::from_ymd_opt(year, 6, 1).and_then(|d| d.and_hms_opt(1, 2, 3)).expect("year");
            check(Utc.from_utc_datetime(&at));
        }
        // Nanosecond steps over a whole second's worth of patterns.
        let base = Utc::now();
        for step in 0..10_000_u32 {
            check(base + chrono::TimeDelta::nanoseconds(i64::from(step) * 99_991));
        }
    }

    fn scratch_table() -> (Connection, *mut ffi::sqlite3, StaticInsert) {
        let connection = Connection::open_in_memory().expect("open");
        connection
            .execute_batch("CREATE TABLE t (a TEXT NOT NULL, b BLOB, c INTEGER CHECK (c >= 0), d REAL)")
            .expect("table");
        // SAFETY (test): the handle is used only while `connection` is open, on this thread.
        let db = unsafe { connection.handle() };
        let insert = StaticInsert::prepare(db, "INSERT INTO t (a, b, c, d) VALUES (?1, ?2, ?3, ?4)").expect("prepare");
        (connection, db, insert)
    }

    /// Values bound in place are read during the step only: every row stores its own text and
    /// blob although the buffers they came from are rewritten (shorter, longer, empty) between
    /// rows.
    #[test]
    fn each_row_stores_its_own_values_read_in_place() {
        let (connection, db, mut insert) = scratch_table();
        let mut text = String::new();
        let mut blob = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200_i64 {
            text.clear();
            blob.clear();
            let length = usize::try_from((i * 37) % 300).expect("length");
            text.extend(std::iter::repeat_n(char::from(b'a' + u8::try_from(i % 26).expect("letter")), length));
            if i % 7 == 3 {
                text.push('é');
            }
            blob.extend((0..length).map(|j| u8::try_from((j + usize::try_from(i).expect("i")) % 251).expect("byte")));
            let values = [ValueRef::Text(text.as_bytes()), ValueRef::Blob(&blob), ValueRef::Integer(i), ValueRef::Real(i as f64 / 4.0)];
            insert.run(db, values.into_iter()).expect("insert");
            expected.push((text.clone(), blob.clone(), i, i as f64 / 4.0));
            // The buffers change before the next row: a value read after the step would show.
            text.push_str("stale");
            blob.push(0xff);
        }
        drop(insert);
        let mut query = connection.prepare("SELECT a, b, c, d FROM t ORDER BY rowid").expect("select");
        let stored: Vec<(String, Vec<u8>, i64, f64)> = query
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(stored, expected);
        // An empty text and an empty blob are values, not NULL.
        let empty: i64 = connection
            .query_row("SELECT count(*) FROM t WHERE a = '' AND b = x''", [], |row| row.get(0))
            .expect("count");
        assert_eq!(empty, 1);
    }

    /// No step runs on a partly bound statement (it would read the previous row's values), a
    /// refused row reports SQLite's extended code and message, and the statement is usable
    /// after either.
    #[test]
    fn a_statement_steps_only_with_every_value_bound_and_recovers_from_a_refused_row() {
        let (connection, db, mut insert) = scratch_table();
        let count = || connection.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0)).expect("count");
        insert
            .run(db, [ValueRef::Text(b"first"), ValueRef::Null, ValueRef::Integer(1), ValueRef::Real(1.0)].into_iter())
            .expect("insert");
        let partial = insert.run(db, [ValueRef::Text(b"second"), ValueRef::Null, ValueRef::Integer(2)].into_iter());
        assert!(matches!(partial, Err(rusqlite::Error::InvalidParameterCount(3, 4))), "{partial:?}");
        assert_eq!(count(), 1);
        let refused = insert.run(db, [ValueRef::Text(b"x"), ValueRef::Null, ValueRef::Integer(-1), ValueRef::Null].into_iter());
        let Err(rusqlite::Error::SqliteFailure(failure, Some(message))) = refused else { panic!("refused: {refused:?}") };
        assert_eq!(failure.extended_code, ffi::SQLITE_CONSTRAINT_CHECK);
        assert!(message.contains("CHECK constraint failed"), "{message}");
        let not_null = insert.run(db, [ValueRef::Null, ValueRef::Null, ValueRef::Null, ValueRef::Null].into_iter());
        assert!(
            matches!(&not_null, Err(rusqlite::Error::SqliteFailure(failure, _)) if failure.extended_code == ffi::SQLITE_CONSTRAINT_NOTNULL),
            "{not_null:?}"
        );
        insert
            .run(db, [ValueRef::Text(b"third"), ValueRef::Blob(b"\x00\x01"), ValueRef::Integer(3), ValueRef::Null].into_iter())
            .expect("insert after a refusal");
        drop(insert);
        let stored: Vec<(String, Option<Vec<u8>>, i64)> = connection
            .prepare("SELECT a, b, c FROM t ORDER BY rowid")
            .expect("select")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(stored, vec![("first".into(), None, 1), ("third".into(), Some(vec![0, 1]), 3)]);
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
