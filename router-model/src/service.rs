//! The embedder as a service for request handlers.
//!
//! Shape borrowed from text-embeddings-inference: the model lives on one dedicated OS thread
//! (matrix work must not run on tokio's workers, and a BERT forward pass is not cancellable),
//! fed through a bounded queue; callers hash the text, queue it and wait on a oneshot, and the
//! model thread tokenises (at its low priority, so a request handler never pays for it). The
//! model thread takes whatever is waiting and runs the newest of it, up to a
//! token budget and as many as can finish before their deadlines, as one batch. Nothing waits
//! past its deadline: a full queue, a missed deadline or one that cannot be met is an
//! immediate [`Error::Overloaded`], because the gateway would rather route to the default
//! model than add latency. Repeated texts are answered from an LRU keyed by the text's blake3 hash.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::embedder::{Embedder, Tokens};
use crate::error::{Error, OverloadReason, Result};

/// A cached embedding; cheap to clone and share with the semantic cache.
pub type Embedding = Arc<[f32]>;

type CacheKey = [u8; 32];

/// Knobs of the [`EmbeddingService`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Callers that may wait for the model thread to take their text into a batch; beyond
    /// this, callers get `Overloaded(QueueFull)` at once. Callers that gave up (deadline
    /// passed, request gone) no longer count, even before the model thread drains their jobs.
    pub queue_capacity: usize,
    /// Largest batch, counted as padded tokens (batch size × longest member). Bounds the
    /// latency a request adds to the others in its batch.
    pub max_batch_tokens: usize,
    /// Largest batch in requests.
    pub max_batch_size: usize,
    /// Entries in the embedding LRU (each ~1.6 KB for 384-d).
    pub cache_capacity: u64,
    /// Threads for the model's matrix work. These are extra OS threads beside tokio's: on a
    /// small machine, fewer threads leave cores to the request handlers.
    pub threads: usize,
    /// Run a few texts through the model before accepting requests, so the first real
    /// request does not pay for lazy initialisation.
    pub warmup: bool,
    /// Scheduling niceness of the model thread and its matrix pool (Linux; 0 = unchanged).
    /// Positive values let the request-handling threads run first when cores are scarce, so
    /// passthrough traffic does not slow down while the model is busy: a late embedding just
    /// sheds the routing decision to the route's default model. The default, 19, gives the
    /// model the cycles request handlers leave idle and almost nothing they want (CFS weight
    /// 15 against 1024 for each handler thread; 10 would still take ~10%).
    pub nice: i32,
    /// Also put the model thread and its pool in Linux's `SCHED_IDLE` class, which gets a
    /// core only when no normal thread wants it (it takes precedence over `nice`). Measured
    /// on 2 cores (`bench/routing.sh`, bench/README.md): passthrough kept 88–101% (median
    /// 97%) of its throughput beside a busy model; on an earlier build, 89% with this and 79%
    /// at nice 19 alone.
    pub idle_scheduling: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_batch_tokens: 4096,
            max_batch_size: 32,
            cache_capacity: 16_384,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            warmup: true,
            nice: 19,
            idle_scheduling: true,
        }
    }
}

/// Counters for metrics; all monotonic except `queue_depth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Callers waiting for the model thread to take their text into a batch right now.
    pub queue_depth: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Requests refused because the queue was full.
    pub rejected_queue_full: u64,
    /// Requests that missed their deadline (before queueing, in the queue, or waiting).
    pub rejected_deadline: u64,
    /// Forward passes run and texts embedded by them.
    pub batches: u64,
    pub embedded: u64,
}

#[derive(Default)]
struct Counters {
    depth: AtomicUsize,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_deadline: AtomicU64,
    batches: AtomicU64,
    embedded: AtomicU64,
}

impl Counters {
    /// Counts a refusal and returns the error that tells the caller.
    fn refuse(&self, reason: OverloadReason) -> Error {
        let counter = match reason {
            OverloadReason::QueueFull => &self.rejected_queue_full,
            OverloadReason::DeadlineExceeded => &self.rejected_deadline,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Error::Overloaded(reason)
    }
}

/// A text on its way to the model thread. It is tokenised there, not by the caller:
/// tokenising a 64-token prompt (BERT normalisation, word pieces) costs ~75 µs, which on the
/// request handler's thread was half the handler's work for a routed request, and at the
/// model thread's low priority it only uses cycles the handlers leave idle. A job whose
/// caller gave up is never tokenised.
struct Job {
    key: CacheKey,
    text: Box<str>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Embedding>>,
    slot: SlotGuard,
}

/// A job in the model thread's backlog, tokenised.
struct Pending {
    key: CacheKey,
    tokens: Tokens,
    deadline: Instant,
    reply: oneshot::Sender<Result<Embedding>>,
    /// Held for its drop: the queue place is freed when the job is batched or answered.
    _slot: SlotGuard,
}

/// A caller's place in the queue, counted in `Counters::depth` from admission until the
/// model thread takes the job into a batch (or answers it) or the caller stops waiting,
/// whichever comes first. Admission counts these live waiters, not the jobs in the channel:
/// while request handlers starve the low-priority model thread, the channel fills with jobs
/// whose callers already shed, and refusing live requests because of them made every routed
/// request shed at once (and clients retry at once, adding load).
struct QueueSlot {
    counters: Arc<Counters>,
    released: AtomicBool,
}

/// A hold on a [`QueueSlot`]: the caller keeps one while it waits and the job carries one
/// until it is batched or answered; the first of them to be dropped frees the place.
struct SlotGuard(Arc<QueueSlot>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.0.released.swap(true, Ordering::AcqRel) {
            self.0.counters.depth.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Jobs the channel holds per unit of `queue_capacity`: room for jobs whose callers gave up
/// while the model thread could not run (they are skipped when it drains them). Bounds the
/// memory of a long-starved model thread: a job holds its text cut to what the token window
/// can use (32 bytes per window token, 4 KB for the default 128-token window), so 4,096 jobs
/// (the default) hold at most 16 MB, and usually a few hundred bytes each.
const CHANNEL_SLACK: usize = 16;

/// The embedder behind a model thread, a bounded queue and an LRU. Clone it freely: clones
/// share the thread, queue and cache; the thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddingService {
    inner: Arc<Inner>,
}

struct Inner {
    tx: SyncSender<Job>,
    queue_capacity: usize,
    cache: moka::sync::Cache<CacheKey, Embedding>,
    embedder: Arc<dyn Embedder>,
    counters: Arc<Counters>,
    _thread: JoinHandle<()>,
}

impl std::fmt::Debug for EmbeddingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingService")
            .field("embedder", &self.inner.embedder.id())
            .field("stats", &self.stats())
            .finish()
    }
}

impl EmbeddingService {
    /// Starts the model thread, warms the model up (if configured) and returns once it is
    /// ready. Blocks for the warm-up (~0.1 s): call it at startup, not per request.
    pub fn start(embedder: Arc<dyn Embedder>, config: ServiceConfig) -> Result<Self> {
        if config.queue_capacity == 0 || config.max_batch_size == 0 || config.threads == 0 {
            return Err(Error::InvalidInput(
                "queue_capacity, max_batch_size and threads must be positive".into(),
            ));
        }
        if !crate::runtime::cpu_threads_configured() {
            tracing::warn!(
                "CANDLE_NUM_THREADS is not 1: candle's spinning worker pool will compete with \
                 request handlers; call router_model::configure_cpu_threads() at the start of main"
            );
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_capacity.saturating_mul(CHANNEL_SLACK));
        let cache = moka::sync::Cache::new(config.cache_capacity);
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();

        let worker = Worker {
            rx,
            embedder: Arc::clone(&embedder),
            cache: cache.clone(),
            counters: Arc::clone(&counters),
            max_batch_tokens: config.max_batch_tokens,
            max_batch_size: config.max_batch_size,
            backlog: VecDeque::new(),
            queue_capacity: config.queue_capacity,
            cost: BatchCost::default(),
        };
        let threads = config.threads;
        let warmup = config.warmup;
        let (nice, idle) = (config.nice, config.idle_scheduling);
        let thread = std::thread::Builder::new()
            .name("router-model-embed".into())
            .spawn(move || {
                lower_thread_priority(nice, idle);
                worker.run(threads, warmup, ready_tx)
            })
            .map_err(|e| Error::io("spawning the embedding thread", e))?;

        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::ServiceStopped),
        }
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                queue_capacity: config.queue_capacity,
                cache,
                embedder,
                counters,
                _thread: thread,
            }),
        })
    }

    /// The embedding of `text`, or `Overloaded` as soon as it is clear it cannot arrive
    /// before `deadline`. A cached embedding is returned even past the deadline (it costs
    /// nothing). The caller only hashes the text; the model thread tokenises it.
    pub async fn embed(&self, text: &str, deadline: Instant) -> Result<Embedding> {
        let inner = &self.inner;
        let key = *blake3::hash(text.as_bytes()).as_bytes();
        if let Some(hit) = inner.cache.get(&key) {
            inner.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        inner.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= deadline {
            return Err(inner.counters.refuse(OverloadReason::DeadlineExceeded));
        }
        if inner.counters.depth.fetch_add(1, Ordering::Relaxed) >= inner.queue_capacity {
            inner.counters.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(inner.counters.refuse(OverloadReason::QueueFull));
        }
        let slot = Arc::new(QueueSlot {
            counters: Arc::clone(&inner.counters),
            released: AtomicBool::new(false),
        });
        let _waiting = SlotGuard(Arc::clone(&slot));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key,
            text: inner.embedder.window_prefix(text).into(),
            deadline,
            reply,
            slot: SlotGuard(slot),
        };
        if let Err(e) = inner.tx.try_send(job) {
            return Err(match e {
                TrySendError::Full(_) => inner.counters.refuse(OverloadReason::QueueFull),
                TrySendError::Disconnected(_) => Error::ServiceStopped,
            });
        }
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::ServiceStopped),
            // Dropping `answer` closes the oneshot; the model thread then skips the job.
            Err(_) => Err(inner.counters.refuse(OverloadReason::DeadlineExceeded)),
        }
    }

    /// A cached embedding of `text`, without queueing anything.
    pub fn cached(&self, text: &str) -> Option<Embedding> {
        self.inner
            .cache
            .get(blake3::hash(text.as_bytes()).as_bytes())
    }

    /// Requests waiting for the model thread now.
    pub fn queue_depth(&self) -> usize {
        self.inner.counters.depth.load(Ordering::Relaxed)
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> ServiceStats {
        let c = &self.inner.counters;
        ServiceStats {
            queue_depth: c.depth.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_misses: c.cache_misses.load(Ordering::Relaxed),
            rejected_queue_full: c.rejected_queue_full.load(Ordering::Relaxed),
            rejected_deadline: c.rejected_deadline.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            embedded: c.embedded.load(Ordering::Relaxed),
        }
    }

    /// The embedder's vector length.
    pub fn dim(&self) -> usize {
        self.inner.embedder.dim()
    }

    /// The embedder's id (what checkpoints are checked against).
    pub fn embedder_id(&self) -> &str {
        self.inner.embedder.id()
    }

    /// The embedder itself, e.g. to embed offline without the queue.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.inner.embedder
    }

}

/// Texts used to warm the model up: one short, one around 64 tokens.
const WARMUP_TEXTS: [&str; 2] = [
    "warm up",
    "The embedding service runs a couple of texts through the model before it accepts \
     requests, so that lazily initialised kernels, allocator pools and thread pools are ready \
     and the first caller does not pay for them with a slow answer or a missed deadline.",
];

/// A group of queued requests for the same text (answered by one row of the batch).
struct Row {
    key: CacheKey,
    tokens: Tokens,
    replies: Vec<oneshot::Sender<Result<Embedding>>>,
}

struct Worker {
    rx: Receiver<Job>,
    embedder: Arc<dyn Embedder>,
    cache: moka::sync::Cache<CacheKey, Embedding>,
    counters: Arc<Counters>,
    max_batch_tokens: usize,
    max_batch_size: usize,
    /// Jobs taken off the queue and not answered yet, oldest first.
    backlog: VecDeque<Pending>,
    /// Most jobs held in `backlog` (the queue's capacity again).
    queue_capacity: usize,
    cost: BatchCost,
}

/// What a batch costs, learnt from the batches run so far. A batch is only as large as its
/// members' deadlines allow, and a job that cannot be embedded in time even alone is answered
/// `Overloaded` at once: under overload, the oldest jobs in a FIFO queue are the ones nearest
/// their deadline, and running a batch that finishes after every member gave up would make
/// every later job late too (a full-shed collapse).
#[derive(Debug, Default)]
struct BatchCost {
    /// Smoothed wall time per padded token of recent batches (0 until one has run).
    ns_per_token: f64,
    /// When the last batch finished.
    last_batch: Option<Instant>,
}

impl BatchCost {
    /// After this long without a batch the estimate is not trusted (it may come from a
    /// moment the cores were busy elsewhere): the next batch, one job, runs regardless and
    /// re-measures.
    const STALE: Duration = Duration::from_millis(500);

    /// Projected wall time of a batch of `padded_tokens`, when the estimate is fresh.
    fn estimate(&self, padded_tokens: usize) -> Option<Duration> {
        let fresh = self.last_batch.is_some_and(|t| t.elapsed() < Self::STALE);
        (fresh && self.ns_per_token > 0.0)
            .then(|| Duration::from_nanos((self.ns_per_token * padded_tokens as f64) as u64))
    }

    fn observe(&mut self, padded_tokens: usize, elapsed: Duration) {
        let sample = elapsed.as_nanos() as f64 / padded_tokens.max(1) as f64;
        self.ns_per_token = if self.ns_per_token > 0.0 {
            0.7 * self.ns_per_token + 0.3 * sample
        } else {
            sample
        };
        self.last_batch = Some(Instant::now());
    }
}

/// Renices the calling thread and optionally moves it to `SCHED_IDLE` (threads it starts
/// afterwards inherit both). On Linux `setpriority(PRIO_PROCESS, 0, …)` and
/// `sched_setscheduler(0, …)` apply to the calling thread only.
fn lower_thread_priority(nice: i32, idle: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if nice != 0 {
            // SAFETY: setpriority takes plain integers and only affects this thread's scheduling.
            let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
            if rc != 0 {
                tracing::debug!(nice, "could not lower the model thread's priority");
            }
        }
        if idle {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param for the call's duration; the call only
            // changes this thread's scheduling class.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if rc != 0 {
                tracing::debug!("could not move the model thread to SCHED_IDLE");
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (nice, idle);
}

impl Worker {
    fn run(mut self, threads: usize, warmup: bool, ready: mpsc::Sender<Result<()>>) {
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("router-model-gemm-{i}"))
            .build()
        {
            Ok(pool) => pool,
            Err(e) => {
                let _ = ready.send(Err(Error::InvalidInput(format!(
                    "building the model thread pool: {e}"
                ))));
                return;
            }
        };
        if warmup {
            let result = pool.install(|| self.embedder.embed_batch(&WARMUP_TEXTS));
            if let Err(e) = result {
                let _ = ready.send(Err(e));
                return;
            }
        }
        if ready.send(Ok(())).is_err() {
            return;
        }
        while let Some(rows) = self.next_batch() {
            let refs: Vec<&Tokens> = rows.iter().map(|r| &r.tokens).collect();
            let padded = refs.iter().map(|t| t.len()).max().unwrap_or(0) * refs.len();
            let started = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                pool.install(|| self.embedder.embed_tokens(&refs))
            }));
            self.cost.observe(padded, started.elapsed());
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(Ok(vectors)) if vectors.len() == rows.len() => {
                    self.counters
                        .embedded
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    for (row, vector) in rows.into_iter().zip(vectors) {
                        let vector: Embedding = vector.into();
                        self.cache.insert(row.key, Arc::clone(&vector));
                        for reply in row.replies {
                            let _ = reply.send(Ok(Arc::clone(&vector)));
                        }
                    }
                }
                other => {
                    let message = match other {
                        Ok(Ok(v)) => {
                            format!("embedder returned {} vectors for {}", v.len(), rows.len())
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "embedder panicked".to_string(),
                    };
                    tracing::error!(%message, "embedding batch failed");
                    for reply in rows.into_iter().flat_map(|r| r.replies) {
                        let _ = reply.send(Err(Error::Model(message.clone())));
                    }
                }
            }
        }
    }

    /// Blocks until a job is waiting, moves what is queued into the backlog, answers what needs
    /// no model work, and returns the largest batch of the newest jobs that fits the token
    /// budget and, by the cost estimate, finishes before every member's deadline. Under
    /// overload the newest jobs are the ones with time left (all share one deadline budget):
    /// taking the oldest first would make small, late batches while everyone waits. The
    /// oldest are refused as soon as they cannot make it even alone. `None` when every
    /// sender is gone.
    fn next_batch(&mut self) -> Option<Vec<Row>> {
        loop {
            if self.backlog.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return None,
                }
            }
            while self.backlog.len() < self.queue_capacity {
                match self.rx.try_recv() {
                    Ok(job) => self.take(job),
                    Err(_) => break,
                }
            }
            self.triage();
            let rows = self.pick_batch();
            if !rows.is_empty() {
                return Some(rows);
            }
        }
    }

    /// Answers the backlog's jobs that need no model work or cannot be embedded before their
    /// deadline even alone.
    fn triage(&mut self) {
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.backlog.len());
        while let Some(job) = self.backlog.pop_front() {
            match self.admit(job) {
                None => {}
                Some(job) if self.cost.estimate(job.tokens.len()).is_some_and(|c| now + c > job.deadline) => {
                    self.reject_late(job);
                }
                Some(job) => kept.push_back(job),
            }
        }
        self.backlog = kept;
    }

    /// Takes jobs newest first while the batch stays within the budgets; identical texts
    /// share a row.
    fn pick_batch(&mut self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        let mut longest = 0usize;
        let mut earliest_deadline: Option<Instant> = None;
        // Without a fresh cost estimate (the first batch, or none for a while) the newest job
        // runs alone to measure: on cores busy with request handlers a full batch would take
        // long, finish after its callers shed, and waste the cycles it took from them.
        let probing = self.cost.estimate(1).is_none();
        while let Some(job) = self.backlog.pop_back() {
            if let Some(row) = rows.iter_mut().find(|r| r.key == job.key) {
                row.replies.push(job.reply);
                continue;
            }
            let new_longest = longest.max(job.tokens.len());
            let padded = new_longest * (rows.len() + 1);
            let deadline = earliest_deadline.map_or(job.deadline, |d| d.min(job.deadline));
            let too_big = !rows.is_empty() && padded > self.max_batch_tokens;
            let too_late =
                !rows.is_empty() && self.cost.estimate(padded).is_some_and(|c| Instant::now() + c > deadline);
            if too_big || too_late {
                self.backlog.push_back(job);
                break;
            }
            earliest_deadline = Some(deadline);
            longest = new_longest;
            rows.push(Row {
                key: job.key,
                tokens: job.tokens,
                replies: vec![job.reply],
            });
            if probing || rows.len() >= self.max_batch_size {
                break;
            }
        }
        rows
    }

    /// Moves a job off the queue into the backlog, tokenised. A job whose caller gave up
    /// costs nothing more than this; a text the tokenizer rejects is answered with the error.
    /// (A job leaving the backlog frees its queue place by dropping its [`SlotGuard`].)
    fn take(&mut self, job: Job) {
        if job.reply.is_closed() {
            return;
        }
        match self.embedder.tokenize(&job.text) {
            Ok(tokens) => self.backlog.push_back(Pending {
                key: job.key,
                tokens,
                deadline: job.deadline,
                reply: job.reply,
                _slot: job.slot,
            }),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }

    /// Answers a job that cannot be embedded before its deadline, so its caller sheds now
    /// rather than at the deadline.
    fn reject_late(&self, job: Pending) {
        let _ = job.reply.send(Err(self.counters.refuse(OverloadReason::DeadlineExceeded)));
    }

    /// Answers a job that needs no model work (caller gone, deadline passed, or the text was
    /// embedded since it was queued); returns the job if it still needs embedding.
    fn admit(&self, job: Pending) -> Option<Pending> {
        if job.reply.is_closed() {
            return None;
        }
        if Instant::now() >= job.deadline {
            self.reject_late(job);
            return None;
        }
        if let Some(hit) = self.cache.get(&job.key) {
            let _ = job.reply.send(Ok(hit));
            return None;
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens are the text's bytes; never asked to embed (these tests only plan batches).
    struct Bytes;

    impl Embedder for Bytes {
        fn dim(&self) -> usize {
            1
        }
        fn id(&self) -> &str {
            "bytes"
        }
        fn tokenize(&self, text: &str) -> Result<Tokens> {
            Ok(Tokens::from_ids(text.bytes().map(u32::from).collect()))
        }
        fn embed_tokens(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
            Ok(batch.iter().map(|_| vec![1.0]).collect())
        }
    }

    /// A worker with `texts` waiting in its backlog (their receivers returned to keep the
    /// callers alive).
    fn worker_with(texts: &[&str]) -> (Worker, Vec<oneshot::Receiver<Result<Embedding>>>, SyncSender<Job>) {
        let (tx, rx) = mpsc::sync_channel(16);
        let counters = Arc::new(Counters::default());
        let mut worker = Worker {
            rx,
            embedder: Arc::new(Bytes),
            cache: moka::sync::Cache::new(16),
            counters: Arc::clone(&counters),
            max_batch_tokens: 4096,
            max_batch_size: 32,
            backlog: VecDeque::new(),
            queue_capacity: 16,
            cost: BatchCost::default(),
        };
        let mut receivers = Vec::new();
        for text in texts {
            let (reply, answer) = oneshot::channel();
            receivers.push(answer);
            counters.depth.fetch_add(1, Ordering::Relaxed);
            worker.take(Job {
                key: *blake3::hash(text.as_bytes()).as_bytes(),
                text: (*text).into(),
                deadline: Instant::now() + Duration::from_secs(60),
                reply,
                slot: SlotGuard(Arc::new(QueueSlot { counters: Arc::clone(&counters), released: AtomicBool::new(false) })),
            });
        }
        (worker, receivers, tx)
    }

    #[test]
    fn without_a_fresh_cost_estimate_one_job_runs_alone_to_measure() {
        let (mut worker, _callers, _tx) = worker_with(&["a", "b", "c", "d", "e"]);
        assert_eq!(worker.backlog.len(), 5);
        let probe = worker.pick_batch();
        assert_eq!(probe.len(), 1, "no estimate yet: one job");
        assert_eq!(probe[0].tokens.len(), 1);
        worker.cost.observe(1, Duration::from_micros(50));
        assert_eq!(worker.pick_batch().len(), 4, "a fresh estimate: the rest in one batch");
        assert_eq!(worker.counters.depth.load(Ordering::Relaxed), 0, "every batched job left the queue");
    }

    #[test]
    fn a_stale_estimate_is_probed_again_with_one_job() {
        let (mut worker, _callers, _tx) = worker_with(&["a", "b", "c"]);
        worker.cost.observe(1, Duration::from_micros(50));
        worker.cost.last_batch = Some(Instant::now() - BatchCost::STALE - Duration::from_millis(1));
        assert_eq!(worker.pick_batch().len(), 1);
    }
}
