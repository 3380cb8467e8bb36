//! The log writer: gets outcome rows off the request path and into the database in batches.
//!
//! - The request path calls [`LogHandle::push`], which never waits: it `try_send`s into a
//!   bounded channel.
//! - One task takes rows off the channel and inserts them in multi-row statements, when a
//!   batch is full (`batch_size`) or its first row has waited `batch_interval`; up to
//!   `concurrency` inserts run at once.
//! - When an insert fails (database down, timeout), the batch is appended to the spill file
//!   (JSON lines, synced) and the database is retried every `retry_interval`. While the spill
//!   file holds rows, new batches are appended to it too, so rows reach the database in the
//!   order they arrived; the replay reads the file front to back and removes it when done.
//!   Inserts skip ids already stored, so a batch whose commit succeeded but whose answer was
//!   lost is replayed without duplicates.
//! - When the channel is full (the database is slower than the traffic), `push` hands the row
//!   to a dedicated spill thread over an unbounded channel instead of dropping it. That
//!   thread only appends to a local file, which keeps up with any request rate, so the
//!   unbounded queue stays short while the request never waits on disk or database.
//! - A row the database refuses for its content (not for being unreachable) is written to
//!   `<spill_path>.rejected` instead of blocking the replay forever.
//!
//! Every row is counted by where it went ([`WriterStats`]); only when the database *and* the
//! local disk fail is a row dropped, and then it is counted and logged as an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use super::spill::{self, SpillFile};
use super::sqlite_rows::SqliteRowInserter;
use super::{is_row_error, LogRow, LogStore, Store};
use crate::config::DatabaseConfig;
use crate::error::Error;

/// Spilled rows whose ids are remembered for feedback before they reach the database; past
/// this, feedback for such a row gets a 404 until the row is replayed.
const MAX_SPILLED_IDS: usize = 1_000_000;
/// How long shutdown keeps replaying the spill file; the rest waits for the next start.
const SHUTDOWN_REPLAY_BUDGET: Duration = Duration::from_secs(5);
/// How long one replay pass may run before the writer goes back to the channel.
const REPLAY_PASS_BUDGET: Duration = Duration::from_millis(250);
/// `Shared::wake_writer_at` while the writer is not waiting for a batch to fill.
const WRITER_NOT_WAITING: usize = usize::MAX;

/// How the writer batches and where it spills.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub channel_capacity: usize,
    pub spill_path: PathBuf,
    pub retry_interval: Duration,
    pub write_timeout: Duration,
    /// Batch inserts allowed to run at the same time.
    pub concurrency: usize,
    /// When false, `prompt_text` is removed from every row before it is queued.
    pub store_prompts: bool,
    /// When false, request rows are counted as `not_logged` and never queued.
    pub log_requests: bool,
}

impl WriterConfig {
    pub fn from_config(config: &DatabaseConfig) -> Self {
        Self {
            batch_size: config.batch_size.max(1),
            batch_interval: Duration::from_millis(config.batch_interval_ms),
            channel_capacity: config.channel_capacity.max(1),
            spill_path: config.spill_path.clone(),
            retry_interval: Duration::from_millis(config.retry_interval_ms.max(1)),
            write_timeout: Duration::from_millis(config.write_timeout_ms.max(1)),
            concurrency: config.write_concurrency.max(1),
            store_prompts: config.store_prompts,
            log_requests: config.log_requests,
        }
    }
}

/// Where rows went, counted since start. With an empty spill file at start and the writer
/// idle, `accepted == written + replayed + rejected + dropped_channel_full + dropped_spill_failed`
/// once the spill file is empty again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Rows handed to the writer.
    pub accepted: u64,
    /// Rows inserted straight from a batch.
    pub written: u64,
    /// Rows appended to the spill file (database down, backlog being replayed, or channel full).
    pub spilled: u64,
    /// Of the spilled rows, those that took the spill thread because the channel was full.
    pub overflowed: u64,
    /// Rows inserted from the spill file (including rows an earlier run left there).
    pub replayed: u64,
    /// Rows the database refused for their content; kept in `<spill_path>.rejected`.
    pub rejected: u64,
    /// Rows lost: the channel was full and the spill file could not be written.
    pub dropped_channel_full: u64,
    /// Rows lost: the database and the spill file both failed.
    pub dropped_spill_failed: u64,
    /// Lines of the spill file that could not be read back (cut short by a crash).
    pub unreadable: u64,
    /// Insert attempts that failed (each spills or keeps its batch in the spill file).
    pub write_failures: u64,
    /// Rows not kept because `[database] log_requests = false` (not counted as accepted).
    pub not_logged: u64,
    /// Rows in the channel now.
    pub queued: u64,
    /// Bytes in the spill file now.
    pub spill_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    written: AtomicU64,
    spilled: AtomicU64,
    overflowed: AtomicU64,
    replayed: AtomicU64,
    rejected: AtomicU64,
    dropped_channel_full: AtomicU64,
    dropped_spill_failed: AtomicU64,
    unreadable: AtomicU64,
    write_failures: AtomicU64,
    not_logged: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// Why rows are going to the spill file; decides which counter a failure lands in.
#[derive(Debug, Clone, Copy)]
enum SpillReason {
    DatabaseDown,
    ChannelFull,
}

struct Shared {
    counters: Counters,
    /// Ids of rows in the spill file or on their way to it (the database was down, or the
    /// channel full), with the tenant that made each request, so that feedback for them is
    /// neither refused nor accepted from another tenant until they are replayed. Rows bound
    /// for a batch are not listed: feedback finds them by flushing the writer (see
    /// `store::feedback`), which spares every request a shared map's insert and removal, the
    /// cache lines of which travel between the serving threads and the writer. Hashed with
    /// foldhash: the ids are the gateway's own UUIDv7s (lookups of client-sent ids insert
    /// nothing), so SipHash's flooding defence buys nothing here.
    spilled_ids: Mutex<HashMap<Uuid, Option<String>>>,
    spill: Mutex<SpillFile>,
    /// The spill thread's inbox; taken at shutdown, which ends the thread.
    overflow: Mutex<Option<std::sync::mpsc::Sender<LogRow>>>,
    store_prompts: bool,
    log_requests: bool,
    /// While the writer waits for its batch to fill, how many queued rows should wake it
    /// ([`WRITER_NOT_WAITING`] otherwise); see [`gather`].
    wake_writer_at: AtomicUsize,
    writer_wake: Notify,
}

/// A poisoned lock only means another thread panicked mid-update; the data is still the
/// best we have, and losing the log over it would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn list_spilled(&self, rows: &[LogRow]) {
        let mut spilled = lock(&self.spilled_ids);
        for row in rows {
            if spilled.len() < MAX_SPILLED_IDS {
                spilled.insert(row.id, row.tenant.clone());
            }
        }
    }

    fn unlist_spilled(&self, rows: &[LogRow]) {
        let mut spilled = lock(&self.spilled_ids);
        for row in rows {
            spilled.remove(&row.id);
        }
    }

    /// Appends rows to the spill file (blocking). Rows that cannot be written are counted
    /// as dropped and logged: the one place a row can be lost.
    fn spill_rows(&self, rows: &[LogRow], reason: SpillReason) {
        if rows.is_empty() {
            return;
        }
        let mut spill = lock(&self.spill);
        match spill.append(rows) {
            Ok(()) => {
                add(&self.counters.spilled, rows.len());
                self.list_spilled(rows);
            }
            Err(error) => {
                let counter = match reason {
                    SpillReason::DatabaseDown => &self.counters.dropped_spill_failed,
                    SpillReason::ChannelFull => &self.counters.dropped_channel_full,
                };
                add(counter, rows.len());
                drop(spill);
                self.unlist_spilled(rows);
                tracing::error!(%error, rows = rows.len(), ?reason, "outcome rows lost: cannot write the spill file");
            }
        }
    }

    fn spill_bytes(&self) -> u64 {
        lock(&self.spill).len()
    }
}

enum Msg {
    /// Boxed: the channel and the writer's inbox move a pointer, not the row's ~570 bytes,
    /// which the request path would otherwise copy into the channel's memory.
    Row(Box<LogRow>),
    /// Reply once everything queued before has been written or spilled.
    Flush(oneshot::Sender<()>),
}

/// The request path's side of the writer: cheap to clone, never waits.
#[derive(Clone)]
pub struct LogHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").field("stats", &self.stats()).finish()
    }
}

impl LogHandle {
    /// Queues a row without waiting. When the channel is full or closed the row goes to the
    /// spill file instead (via the spill thread, or directly once the writer has stopped).
    pub fn push(&self, row: LogRow) {
        self.push_with(|| row);
    }

    /// [`push`](Self::push) for a row built only when the log keeps it: with `[database]
    /// log_requests = false` a request builds no row at all.
    pub fn push_with(&self, row: impl FnOnce() -> LogRow) {
        if !self.shared.log_requests {
            add(&self.shared.counters.not_logged, 1);
            return;
        }
        let mut row = Box::new(row());
        self.prepare(&mut row);
        let row = match self.tx.try_send(Msg::Row(row)) {
            Ok(()) => {
                self.wake_writer_if_batch_full();
                return;
            }
            Err(mpsc::error::TrySendError::Full(Msg::Row(row))) => {
                let row = *row;
                add(&self.shared.counters.overflowed, 1);
                // Listed now, not when the spill thread has appended it: a flush does not
                // wait for that thread's queue.
                self.shared.list_spilled(std::slice::from_ref(&row));
                match self.to_spill_thread(row) {
                    None => return,
                    Some(row) => row,
                }
            }
            Err(mpsc::error::TrySendError::Closed(Msg::Row(row))) => *row,
            // Only rows are ever `try_send`.
            Err(_) => return,
        };
        // The writer or the spill thread has stopped (shutdown): append right here, for
        // the next start to replay.
        self.shared.spill_rows(std::slice::from_ref(&row), SpillReason::ChannelFull);
    }

    /// Wakes a writer waiting for its batch to fill once enough rows are queued: one wake-up
    /// per batch rather than one per row.
    fn wake_writer_if_batch_full(&self) {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let shared = &self.shared;
        if queued >= shared.wake_writer_at.load(Ordering::SeqCst)
            && shared.wake_writer_at.swap(WRITER_NOT_WAITING, Ordering::SeqCst) != WRITER_NOT_WAITING
        {
            shared.writer_wake.notify_one();
        }
    }

    /// Hands a row to the spill thread; gives it back if the thread has stopped.
    fn to_spill_thread(&self, row: LogRow) -> Option<LogRow> {
        match lock(&self.shared.overflow).as_ref() {
            Some(tx) => tx.send(row).err().map(|e| e.0),
            None => Some(row),
        }
    }

    /// Queues a row, waiting for room in the channel. For bulk loaders and benchmarks, not
    /// for the request path.
    pub async fn send(&self, mut row: LogRow) -> Result<(), Error> {
        self.prepare(&mut row);
        match self.tx.send(Msg::Row(Box::new(row))).await {
            Ok(()) => {
                self.wake_writer_if_batch_full();
                Ok(())
            }
            Err(mpsc::error::SendError(msg)) => {
                if let Msg::Row(row) = msg {
                    self.shared.spill_rows(std::slice::from_ref(&row), SpillReason::ChannelFull);
                }
                Ok(())
            }
        }
    }

    /// Waits until every row queued before this call is in the database or the spill file.
    pub async fn flush(&self) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .await
            .map_err(|_| Error::Internal("the log writer has stopped".into()))?;
        // A writer waiting for its batch to fill takes the flush now, not at the batch's deadline.
        self.shared.writer_wake.notify_one();
        wait.await.map_err(|_| Error::Internal("the log writer has stopped".into()))
    }

    /// Whether `id`'s row is in this process's spill file (or on its way there) and not yet
    /// replayed into the database.
    pub fn is_spilled(&self, id: Uuid) -> bool {
        lock(&self.shared.spilled_ids).contains_key(&id)
    }

    /// The tenant of a spilled request (`Some(None)`: made without a tenant), or `None` when
    /// `id` is not spilled.
    pub fn spilled_tenant(&self, id: Uuid) -> Option<Option<String>> {
        lock(&self.shared.spilled_ids).get(&id).cloned()
    }

    /// Whether rows keep their prompt text (`[database] store_prompts`).
    pub fn stores_prompts(&self) -> bool {
        self.shared.store_prompts
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            accepted: get(&c.accepted),
            written: get(&c.written),
            spilled: get(&c.spilled),
            overflowed: get(&c.overflowed),
            replayed: get(&c.replayed),
            rejected: get(&c.rejected),
            dropped_channel_full: get(&c.dropped_channel_full),
            dropped_spill_failed: get(&c.dropped_spill_failed),
            unreadable: get(&c.unreadable),
            write_failures: get(&c.write_failures),
            not_logged: get(&c.not_logged),
            queued: (self.tx.max_capacity() - self.tx.capacity()) as u64,
            spill_bytes: self.shared.spill_bytes(),
        }
    }

    fn prepare(&self, row: &mut LogRow) {
        if !self.shared.store_prompts {
            row.prompt_text = None;
            row.answer_text = None;
        } else {
            for text in [&mut row.prompt_text, &mut row.answer_text].into_iter().flatten() {
                // Postgres text cannot hold NUL; without this one prompt would be refused.
                if text.contains('\0') {
                    *text = text.replace('\0', "");
                }
            }
        }
        add(&self.shared.counters.accepted, 1);
    }
}

/// The writer task and its spill thread; [`LogWriter::shutdown`] flushes and stops them.
pub struct LogWriter {
    handle: LogHandle,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    overflow_thread: std::thread::JoinHandle<()>,
    _close_overflow: CloseOverflow,
}

/// Ends the spill thread when the writer is dropped without [`LogWriter::shutdown`] (the
/// thread holds the shared state, so it would otherwise wait forever).
struct CloseOverflow(Arc<Shared>);

impl Drop for CloseOverflow {
    fn drop(&mut self) {
        drop(lock(&self.0.overflow).take());
    }
}

impl LogWriter {
    /// Starts the writer. Rows an earlier run left in the spill file are replayed as soon as
    /// the database answers.
    pub fn spawn(store: Store, config: WriterConfig) -> Result<Self, Error> {
        let spill = SpillFile::open(&config.spill_path).map_err(|e| {
            Error::Config(format!("cannot open the spill file {}: {e}", config.spill_path.display()))
        })?;
        if spill.len() > 0 {
            tracing::info!(path = %spill.path().display(), bytes = spill.len(), "outcome rows left in the spill file will be replayed");
        }
        let (overflow_tx, overflow_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            spilled_ids: Mutex::new(HashMap::new()),
            spill: Mutex::new(spill),
            overflow: Mutex::new(Some(overflow_tx)),
            store_prompts: config.store_prompts,
            log_requests: config.log_requests,
            wake_writer_at: AtomicUsize::new(WRITER_NOT_WAITING),
            writer_wake: Notify::new(),
        });
        let overflow_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("switchyard-spill".into())
                .spawn(move || overflow_loop(&overflow_rx, &shared))
                .map_err(|e| Error::Internal(format!("cannot start the spill thread: {e}")))?
        };
        let file_rows = match &store {
            Store::Sqlite(sqlite) => sqlite.file().map(|file| SqliteRowInserter::spawn(file.to_path_buf())).transpose()?,
            Store::Postgres(_) => None,
        };
        let mut config = config;
        if matches!(store, Store::Sqlite(_)) {
            // SQLite has one writer at a time: a second insert would only wait for the lock.
            config.concurrency = 1;
        }
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let (stop, stopped) = oneshot::channel();
        let writer = Writer {
            rx,
            shared: shared.clone(),
            inserter: Inserter {
                store,
                file_rows,
                shared: shared.clone(),
                write_timeout: config.write_timeout,
                rejected_path: rejected_path(&config.spill_path),
            },
            config,
            in_flight: InFlight::new(),
            replay_offset: 0,
            retry_at: None,
            spare_batch: None,
        };
        let task = tokio::spawn(writer.run(stopped));
        Ok(Self {
            handle: LogHandle { tx, shared: shared.clone() },
            stop,
            task,
            overflow_thread,
            _close_overflow: CloseOverflow(shared),
        })
    }

    pub fn handle(&self) -> LogHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> WriterStats {
        self.handle.stats()
    }

    /// Stops taking rows, writes everything queued (or spills it), replays the spill file
    /// for up to a few seconds, and returns the final counts. Rows pushed after this go
    /// straight to the spill file for the next start.
    pub async fn shutdown(self) -> WriterStats {
        // The spill thread first, so that its rows are in the file before the last replay.
        drop(lock(&self.handle.shared.overflow).take());
        let thread = self.overflow_thread;
        if !matches!(tokio::task::spawn_blocking(move || thread.join()).await, Ok(Ok(()))) {
            tracing::error!("the spill thread panicked");
        }
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the log writer task failed");
        }
        let stats = self.handle.stats();
        tracing::info!(?stats, "log writer stopped");
        stats
    }
}

fn rejected_path(spill_path: &Path) -> PathBuf {
    let mut name = spill_path.as_os_str().to_owned();
    name.push(".rejected");
    PathBuf::from(name)
}

/// The spill thread: appends what the request path could not queue.
fn overflow_loop(rx: &std::sync::mpsc::Receiver<LogRow>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let mut rows = vec![first];
        while rows.len() < 4096 {
            match rx.try_recv() {
                Ok(row) => rows.push(row),
                Err(_) => break,
            }
        }
        shared.spill_rows(&rows, SpillReason::ChannelFull);
    }
}

/// Inserts batches; cheap to clone into the tasks that run inserts side by side.
#[derive(Clone)]
struct Inserter {
    store: Store,
    /// Rows into an SQLite database file go through their own connection and thread.
    file_rows: Option<SqliteRowInserter>,
    shared: Arc<Shared>,
    write_timeout: Duration,
    rejected_path: PathBuf,
}

impl Inserter {
    /// Inserts rows with a time limit. If the database refuses the batch for its content,
    /// rows are inserted one by one and the refused ones set aside. Returns how many were
    /// set aside.
    async fn insert(&self, rows: &Arc<Vec<LogRow>>) -> Result<usize, Error> {
        let error = match self.insert_timed(rows).await {
            Ok(()) => return Ok(0),
            Err(error) if is_row_error(&error) => error,
            Err(error) => return Err(error),
        };
        tracing::warn!(%error, rows = rows.len(), "the database refused a batch; inserting its rows one by one");
        let mut refused = Vec::new();
        for row in rows.iter() {
            match self.insert_timed(&Arc::new(vec![row.clone()])).await {
                Ok(()) => {}
                Err(error) if is_row_error(&error) => {
                    tracing::error!(%error, id = %row.id, "the database refused an outcome row; set aside");
                    refused.push(row.clone());
                }
                // Rows inserted so far are skipped when the whole batch is retried.
                Err(error) => return Err(error),
            }
        }
        let count = refused.len();
        let path = self.rejected_path.clone();
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let kept = SpillFile::open(&path).and_then(|mut file| file.append(&refused));
            match kept {
                Ok(()) => add(&shared.counters.rejected, refused.len()),
                Err(error) => {
                    add(&shared.counters.dropped_spill_failed, refused.len());
                    tracing::error!(%error, path = %path.display(), "cannot keep refused outcome rows");
                }
            }
        })
        .await;
        Ok(count)
    }

    async fn insert_timed(&self, rows: &Arc<Vec<LogRow>>) -> Result<(), Error> {
        use tracing::Instrument;
        let span = tracing::info_span!("log write", rows = rows.len());
        let inserted = match &self.file_rows {
            Some(file_rows) => tokio::time::timeout(self.write_timeout, file_rows.insert(rows.clone()).instrument(span)).await,
            None => tokio::time::timeout(self.write_timeout, self.store.insert_rows(rows).instrument(span)).await,
        };
        match inserted {
            Ok(result) => result,
            Err(_) => Err(Error::Database {
                context: "writing the outcome log (timed out)",
                source: Arc::new(sqlx::Error::PoolTimedOut),
            }),
        }
    }
}

/// A batch insert running in its own task: the rows come back with the result.
type InFlight = tokio::task::JoinSet<Inserted>;
/// A batch and what its insert returned (rows set aside, or the error).
type Inserted = (Arc<Vec<LogRow>>, Result<usize, Error>);

struct Writer {
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    config: WriterConfig,
    inserter: Inserter,
    /// Inserts running now, at most `config.concurrency`: Postgres spreads them over cores,
    /// and one batch is encoded while another commits.
    in_flight: InFlight,
    /// How far the replay has read the spill file.
    replay_offset: u64,
    /// Set after a failed write: no database attempt before then.
    retry_at: Option<Instant>,
    /// A written batch's vector, emptied, for the next batch: a batch's room (`batch_size`
    /// rows of ~570 bytes) allocated afresh each time was megabytes of new pages to fault in.
    spare_batch: Option<Vec<LogRow>>,
}

impl Writer {
    /// The rows gathered in `batch`, leaving it empty (the spare vector, if there is one).
    fn take_batch(&mut self, batch: &mut Vec<LogRow>) -> Vec<LogRow> {
        let next = self.spare_batch.take().unwrap_or_else(|| Vec::with_capacity(self.config.batch_size));
        std::mem::replace(batch, next)
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let batch_size = self.config.batch_size;
        let mut batch = Vec::with_capacity(batch_size);
        let mut inbox: Vec<Msg> = Vec::with_capacity(batch_size);
        let mut stopping = false;
        loop {
            let replay_due = self.replay_due();
            tokio::select! {
                biased;
                _ = &mut stop, if !stopping => {
                    // Refuse new rows; what is queued is still received below.
                    stopping = true;
                    self.rx.close();
                    continue;
                }
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.finished(done).await;
                    continue;
                }
                received = self.rx.recv_many(&mut inbox, batch_size) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = sleep_until_opt(replay_due), if replay_due.is_some() => {
                    self.replay(REPLAY_PASS_BUDGET).await;
                    continue;
                }
            }
            // Fill the batch until it is full or its first row has waited long enough.
            let deadline = Instant::now() + self.config.batch_interval;
            loop {
                for msg in inbox.drain(..) {
                    match msg {
                        Msg::Row(row) => batch.push(*row),
                        Msg::Flush(done) => {
                            let rows = self.take_batch(&mut batch);
                            self.write(rows).await;
                            self.drain_in_flight().await;
                            let _ = done.send(());
                        }
                    }
                }
                if batch.is_empty() || batch.len() >= batch_size {
                    break;
                }
                let room = batch_size - batch.len();
                let received = tokio::select! {
                    biased;
                    // Shutdown does not wait out the batch interval: once the channel is
                    // closed, `recv_many` returns what is left at once.
                    _ = &mut stop, if !stopping => {
                        stopping = true;
                        self.rx.close();
                        continue;
                    }
                    received = gather(&mut self.rx, &mut inbox, room, deadline, !stopping, &self.shared) => received,
                };
                match received {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let full = self.take_batch(&mut batch);
            self.write(full).await;
            if self.replay_due().is_some_and(|at| at <= Instant::now()) {
                self.replay(REPLAY_PASS_BUDGET).await;
            }
        }
        self.drain_in_flight().await;
        self.replay(SHUTDOWN_REPLAY_BUDGET).await;
        let left = self.shared.spill_bytes();
        if left > 0 {
            tracing::warn!(bytes = left, "outcome rows remain in the spill file; they are replayed at the next start");
        }
    }

    /// When the spill file should next be replayed; `None` when it is empty.
    fn replay_due(&self) -> Option<Instant> {
        if self.shared.spill_bytes() == 0 {
            return None;
        }
        Some(self.retry_at.unwrap_or_else(Instant::now))
    }

    /// Starts inserting a batch, or spills it while the spill file has rows (to keep the
    /// order) or the database has just failed.
    async fn write(&mut self, rows: Vec<LogRow>) {
        if rows.is_empty() {
            if self.spare_batch.is_none() {
                self.spare_batch = Some(rows);
            }
            return;
        }
        if self.shared.spill_bytes() > 0 {
            self.spill(rows).await;
            return;
        }
        while self.in_flight.len() >= self.config.concurrency {
            match self.in_flight.join_next().await {
                Some(done) => self.finished(done).await,
                None => break,
            }
        }
        let inserter = self.inserter.clone();
        let rows = Arc::new(rows);
        self.in_flight.spawn(async move {
            let result = inserter.insert(&rows).await;
            (rows, result)
        });
    }

    /// Counts a finished insert, or spills its rows if it failed.
    async fn finished(&mut self, done: Result<Inserted, tokio::task::JoinError>) {
        match done {
            Ok((rows, Ok(rejected))) => {
                add(&self.shared.counters.written, rows.len() - rejected);
                if let Ok(mut rows) = Arc::try_unwrap(rows) {
                    rows.clear();
                    self.spare_batch = Some(rows);
                }
            }
            Ok((rows, Err(error))) => {
                self.failed(&error);
                // A timed-out insert may still hold its reference; then the rows are copied.
                self.spill(Arc::try_unwrap(rows).unwrap_or_else(|rows| rows.as_ref().clone())).await;
            }
            // The insert task panicked or was cancelled: its rows are gone with it.
            Err(error) => tracing::error!(%error, "an outcome log insert task failed"),
        }
    }

    async fn drain_in_flight(&mut self) {
        while let Some(done) = self.in_flight.join_next().await {
            self.finished(done).await;
        }
    }

    fn failed(&mut self, error: &Error) {
        add(&self.shared.counters.write_failures, 1);
        if self.retry_at.is_none() {
            tracing::warn!(%error, "cannot write the outcome log; spilling rows to disk until the database is back");
        } else {
            tracing::debug!(%error, "outcome log still unreachable");
        }
        self.retry_at = Some(Instant::now() + self.config.retry_interval);
    }

    /// Appends rows to the spill file off the async threads.
    async fn spill(&self, rows: Vec<LogRow>) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.spill_rows(&rows, SpillReason::DatabaseDown)).await;
    }

    /// Replays the spill file front to back for up to `budget`, and removes it once all of
    /// it is in the database. Stops at the first failure and waits `retry_interval`.
    async fn replay(&mut self, budget: Duration) {
        let started = Instant::now();
        loop {
            if self.retry_at.is_some_and(|at| at > Instant::now()) {
                return;
            }
            let (path, end) = {
                let spill = lock(&self.shared.spill);
                (spill.path().to_owned(), spill.len())
            };
            if end == 0 {
                self.replay_offset = 0;
                return;
            }
            if self.replay_offset >= end {
                let mut spill = lock(&self.shared.spill);
                match spill.remove_if_consumed(self.replay_offset) {
                    Ok(true) => {
                        self.replay_offset = 0;
                        tracing::info!("spill file replayed; writing to the database again");
                    }
                    Ok(false) => continue,
                    Err(error) => tracing::warn!(%error, "cannot remove the replayed spill file"),
                }
                return;
            }
            let offset = self.replay_offset;
            let max = self.config.batch_size;
            let read = tokio::task::spawn_blocking(move || spill::read_chunk(&path, offset, end, max)).await;
            let chunk = match read {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot read the spill file");
                    self.retry_at = Some(Instant::now() + self.config.retry_interval);
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, "spill file reader failed");
                    return;
                }
            };
            add(&self.shared.counters.unreadable, chunk.unreadable as usize);
            let rows = Arc::new(chunk.rows);
            match self.inserter.insert(&rows).await {
                Ok(rejected) => {
                    add(&self.shared.counters.replayed, rows.len() - rejected);
                    self.shared.unlist_spilled(&rows);
                    self.replay_offset = chunk.next_offset;
                    if self.retry_at.take().is_some() {
                        tracing::info!("outcome log reachable again; replaying the spill file");
                    }
                }
                Err(error) => {
                    self.failed(&error);
                    return;
                }
            }
            if started.elapsed() >= budget {
                return;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Up to `room` more messages for the batch, by `deadline` (`Err` when none came). Waiting
/// on the channel would wake the writer for every row (on a busy gateway, one wake-up, often
/// of another thread, per request), and waking on a short timer costs the runtime a wake-up of
/// its I/O driver per tick (Tokio re-arms the driver whenever a timer is set that expires
/// before everything else it holds). So when `patient` the writer sleeps until the batch's
/// deadline, or until the request path finds `room` rows queued, and takes what is there.
async fn gather(
    rx: &mut mpsc::Receiver<Msg>,
    inbox: &mut Vec<Msg>,
    room: usize,
    deadline: Instant,
    patient: bool,
    shared: &Shared,
) -> Result<usize, tokio::time::error::Elapsed> {
    if patient && rx.len() < room {
        shared.wake_writer_at.store(room, Ordering::SeqCst);
        // A row queued between the check above and the store saw no mark: look again.
        if rx.len() < room {
            let _ = tokio::time::timeout_at(deadline, shared.writer_wake.notified()).await;
        }
        shared.wake_writer_at.store(WRITER_NOT_WAITING, Ordering::SeqCst);
    }
    tokio::time::timeout_at(deadline, rx.recv_many(inbox, room)).await
}
