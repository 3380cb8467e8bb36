//! The embedding service: concurrency, batching, deadlines, queue limits and the cache.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // tests fail loudly
mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use router_model::{Embedder, EmbeddingService, Error, OverloadReason, ServiceConfig, Tokens};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_embeds_all_succeed_and_match_direct_ones() {
    let embedder = Arc::new(common::embedder());
    let service =
        EmbeddingService::start(embedder.clone(), ServiceConfig::default()).expect("start service");
    let texts: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "Request number {i}: how would you summarise topic {}?",
                i % 17
            )
        })
        .collect();
    let mut handles = Vec::new();
    for text in texts.clone() {
        let service = service.clone();
        handles.push(tokio::spawn(
            async move { service.embed(&text, far()).await },
        ));
    }
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.expect("join").expect("embed"));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let direct = embedder.embed_batch(&refs).expect("direct");
    for ((text, a), b) in texts.iter().zip(&got).zip(&direct) {
        let c = router_model::cosine(a, b);
        assert!(c > 0.99999, "{text}: cosine {c}");
    }
    let stats = service.stats();
    assert_eq!(stats.embedded, 50);
    assert!(stats.batches < 50, "requests were batched: {stats:?}");
    assert_eq!(service.queue_depth(), 0);
}

#[tokio::test]
async fn past_deadline_is_overloaded_at_once() {
    let service = EmbeddingService::start(Arc::new(common::embedder()), ServiceConfig::default())
        .expect("start");
    let started = Instant::now();
    let err = service
        .embed("too late", Instant::now() - Duration::from_millis(1))
        .await
        .expect_err("must be refused");
    assert!(
        matches!(err, Error::Overloaded(OverloadReason::DeadlineExceeded)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(20));
    assert_eq!(service.stats().rejected_deadline, 1);
}

#[tokio::test]
async fn cache_hit_returns_the_same_vector() {
    let service = EmbeddingService::start(Arc::new(common::embedder()), ServiceConfig::default())
        .expect("start");
    let a = service.embed("cache me", far()).await.expect("first");
    let b = service.embed("cache me", far()).await.expect("second");
    assert!(Arc::ptr_eq(&a, &b));
    // A hit is served even past the deadline: it costs nothing.
    let c = service
        .embed("cache me", Instant::now() - Duration::from_secs(1))
        .await
        .expect("hit past deadline");
    assert!(Arc::ptr_eq(&a, &c));
    let stats = service.stats();
    assert_eq!((stats.cache_hits, stats.cache_misses), (2, 1));
    assert!(service.cached("cache me").is_some());
    assert!(service.cached("never embedded").is_none());
}

/// Polls `condition` until it holds; fails the test after 5 s.
async fn wait_until(condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A test double whose forward pass blocks until the test opens a gate, so queue states are
/// reproducible. Records the size of every batch it runs.
struct GatedEmbedder {
    open: Mutex<bool>,
    cv: Condvar,
    entered: Mutex<usize>,
    batches: Mutex<Vec<usize>>,
}

impl GatedEmbedder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(true),
            cv: Condvar::new(),
            entered: Mutex::new(0),
            batches: Mutex::new(Vec::new()),
        })
    }
    fn close(&self) {
        *self.open.lock().expect("lock") = false;
    }
    fn open(&self) {
        *self.open.lock().expect("lock") = true;
        self.cv.notify_all();
    }
    fn entered(&self) -> usize {
        *self.entered.lock().expect("lock")
    }
    async fn wait_entered(&self, n: usize) {
        wait_until(|| self.entered() >= n).await;
    }
}

impl Embedder for GatedEmbedder {
    fn dim(&self) -> usize {
        2
    }
    fn id(&self) -> &str {
        "gated-test-double"
    }
    fn tokenize(&self, text: &str) -> router_model::Result<Tokens> {
        Ok(Tokens::from_ids(text.bytes().map(u32::from).collect()))
    }
    fn embed_tokens(&self, batch: &[&Tokens]) -> router_model::Result<Vec<Vec<f32>>> {
        *self.entered.lock().expect("lock") += 1;
        self.batches.lock().expect("lock").push(batch.len());
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.cv.wait(open).expect("wait");
        }
        Ok(batch.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
    }
}

/// Normal scheduling: these tests time the queue's logic, and a `SCHED_IDLE` model thread
/// could wait behind the other tests nextest runs at the same time.
fn gated_config() -> ServiceConfig {
    ServiceConfig {
        queue_capacity: 1,
        max_batch_size: 8,
        threads: 1,
        warmup: false,
        nice: 0,
        idle_scheduling: false,
        ..ServiceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_overloaded_at_once() {
    let gated = GatedEmbedder::new();
    gated.close();
    let service = EmbeddingService::start(gated.clone(), gated_config()).expect("start");
    let s1 = service.clone();
    let first = tokio::spawn(async move { s1.embed("first", far()).await });
    gated.wait_entered(1).await; // the model thread is busy with "first"
    let s2 = service.clone();
    let second = tokio::spawn(async move { s2.embed("second", far()).await });
    wait_until(|| service.queue_depth() >= 1).await;
    let started = Instant::now();
    let err = service
        .embed("third", far())
        .await
        .expect_err("queue is full");
    assert!(
        matches!(err, Error::Overloaded(OverloadReason::QueueFull)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    gated.open();
    assert_eq!(&*first.await.expect("join").expect("first"), &[5.0, 1.0]);
    assert_eq!(&*second.await.expect("join").expect("second"), &[6.0, 1.0]);
    assert_eq!(service.stats().rejected_queue_full, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_passing_in_the_queue_is_overloaded_without_waiting() {
    let gated = GatedEmbedder::new();
    gated.close();
    let service = EmbeddingService::start(gated.clone(), gated_config()).expect("start");
    let s1 = service.clone();
    let first = tokio::spawn(async move { s1.embed("first", far()).await });
    gated.wait_entered(1).await;
    let started = Instant::now();
    let err = service
        .embed("second", Instant::now() + Duration::from_millis(50))
        .await
        .expect_err("deadline passes while the model is busy");
    let waited = started.elapsed();
    assert!(
        matches!(err, Error::Overloaded(OverloadReason::DeadlineExceeded)),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(45) && waited < Duration::from_millis(500),
        "{waited:?}"
    );
    gated.open();
    first.await.expect("join").expect("first");
    // The abandoned job is skipped by the model thread, not embedded.
    wait_until(|| service.queue_depth() == 0).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(service.stats().embedded, 1);
    assert!(service.cached("second").is_none());
}

/// While the model thread cannot run, jobs of callers that gave up pile up in the channel;
/// they must not hold the queue's places, or every later request is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_gave_up_do_not_hold_queue_places() {
    let gated = GatedEmbedder::new();
    gated.close();
    let service = EmbeddingService::start(gated.clone(), gated_config()).expect("start");
    let s1 = service.clone();
    let first = tokio::spawn(async move { s1.embed("first", far()).await });
    gated.wait_entered(1).await; // the model thread is stuck in "first"
    for i in 0..3 {
        let err = service
            .embed(&format!("gave up {i}"), Instant::now() + Duration::from_millis(20))
            .await
            .expect_err("the model thread is busy");
        assert!(
            matches!(err, Error::Overloaded(OverloadReason::DeadlineExceeded)),
            "{err}"
        );
    }
    assert_eq!(service.queue_depth(), 0);
    let s2 = service.clone();
    let live = tokio::spawn(async move { s2.embed("live", far()).await });
    wait_until(|| service.queue_depth() == 1).await;
    gated.open();
    first.await.expect("join").expect("first");
    assert_eq!(&*live.await.expect("join").expect("live"), &[4.0, 1.0]);
    let stats = service.stats();
    assert_eq!(stats.rejected_queue_full, 0);
    assert_eq!(stats.embedded, 2, "the abandoned texts are skipped, not embedded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_form_one_batch_and_duplicates_share_a_row() {
    let gated = GatedEmbedder::new();
    gated.close();
    let config = ServiceConfig {
        queue_capacity: 16,
        ..gated_config()
    };
    let service = EmbeddingService::start(gated.clone(), config).expect("start");
    let s0 = service.clone();
    let blocker = tokio::spawn(async move { s0.embed("blocker", far()).await });
    gated.wait_entered(1).await;
    let mut waiting = Vec::new();
    for text in ["a", "bb", "ccc", "bb", "dddd"] {
        let s = service.clone();
        waiting.push(tokio::spawn(async move { s.embed(text, far()).await }));
    }
    wait_until(|| service.queue_depth() >= 5).await;
    gated.open();
    blocker.await.expect("join").expect("blocker");
    let mut results = Vec::new();
    for w in waiting {
        results.push(w.await.expect("join").expect("embed"));
    }
    assert_eq!(results[1][0], 2.0);
    assert!(
        Arc::ptr_eq(&results[1], &results[3]),
        "duplicate texts share one row"
    );
    let batches = gated.batches.lock().expect("lock").clone();
    assert_eq!(
        batches,
        vec![1, 4],
        "blocker alone, then the 4 distinct waiting texts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budget_splits_batches() {
    let gated = GatedEmbedder::new();
    gated.close();
    let config = ServiceConfig {
        queue_capacity: 16,
        max_batch_tokens: 20, // two 10-byte texts per batch
        ..gated_config()
    };
    let service = EmbeddingService::start(gated.clone(), config).expect("start");
    let s0 = service.clone();
    let blocker = tokio::spawn(async move { s0.embed("blocker", far()).await });
    gated.wait_entered(1).await;
    let mut waiting = Vec::new();
    for i in 0..5 {
        let s = service.clone();
        waiting.push(tokio::spawn(async move {
            s.embed(&format!("text-{i:05}"), far()).await
        }));
    }
    wait_until(|| service.queue_depth() >= 5).await;
    gated.open();
    blocker.await.expect("join").expect("blocker");
    for w in waiting {
        w.await.expect("join").expect("embed");
    }
    assert_eq!(*gated.batches.lock().expect("lock"), vec![1, 2, 2, 1]);
}

/// A test double that takes a fixed wall time per padded token, like a real forward pass.
struct PacedEmbedder {
    per_token: Duration,
    calls: Mutex<Vec<usize>>,
}

impl Embedder for PacedEmbedder {
    fn dim(&self) -> usize {
        2
    }
    fn id(&self) -> &str {
        "paced-test-double"
    }
    fn tokenize(&self, text: &str) -> router_model::Result<Tokens> {
        Ok(Tokens::from_ids(text.bytes().map(u32::from).collect()))
    }
    fn embed_tokens(&self, batch: &[&Tokens]) -> router_model::Result<Vec<Vec<f32>>> {
        let padded = batch.iter().map(|t| t.len()).max().unwrap_or(0) * batch.len();
        self.calls.lock().expect("lock").push(batch.len());
        std::thread::sleep(self.per_token * padded as u32);
        Ok(batch.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_finish_in_time_is_refused_at_once() {
    let paced = Arc::new(PacedEmbedder { per_token: Duration::from_millis(2), calls: Mutex::new(Vec::new()) });
    let service = EmbeddingService::start(paced.clone(), gated_config()).expect("start");
    // One batch teaches the service the cost: 20 tokens, ~40 ms.
    service.embed(&"a".repeat(20), far()).await.expect("first embed");
    // Another 20-token text with 15 ms left cannot be done in time: refused without running.
    let started = Instant::now();
    let err = service
        .embed(&"b".repeat(20), Instant::now() + Duration::from_millis(15))
        .await
        .expect_err("cannot finish in time");
    assert!(matches!(err, Error::Overloaded(OverloadReason::DeadlineExceeded)), "{err}");
    assert!(started.elapsed() < Duration::from_millis(12), "answered before its deadline: {:?}", started.elapsed());
    // One with room to spare is embedded.
    let ok = service.embed(&"c".repeat(20), Instant::now() + Duration::from_millis(500)).await.expect("fits");
    assert_eq!(ok[0], 20.0);
    assert_eq!(*paced.calls.lock().expect("lock"), vec![1, 1], "the refused text never reached the model");
    assert_eq!(service.stats().rejected_deadline, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_the_newest_jobs_are_batched_and_the_oldest_refused() {
    let paced = Arc::new(PacedEmbedder { per_token: Duration::from_millis(1), calls: Mutex::new(Vec::new()) });
    let config = ServiceConfig { queue_capacity: 64, ..gated_config() };
    let service = EmbeddingService::start(paced.clone(), config).expect("start");
    // Teach the cost (10 tokens, ~10 ms), then keep the model busy with a 60-token text.
    service.embed(&"w".repeat(10), far()).await.expect("warm");
    let s = service.clone();
    let busy = tokio::spawn(async move { s.embed(&"x".repeat(60), far()).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    // While it runs (~60 ms): an old job with 70 ms left, then four newer ones with 200 ms.
    let s = service.clone();
    let old = tokio::spawn(async move { s.embed(&"o".repeat(10), Instant::now() + Duration::from_millis(70)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut newer = Vec::new();
    for i in 0..4 {
        let s = service.clone();
        newer.push(tokio::spawn(async move {
            s.embed(&format!("new-{i}-{}", "n".repeat(4)), Instant::now() + Duration::from_millis(200)).await
        }));
    }
    busy.await.expect("join").expect("busy");
    for job in newer {
        job.await.expect("join").expect("newer jobs are embedded");
    }
    // The old job had ~20 ms left when the model came free: a batch with it could not meet
    // its deadline, so the newer ones went first and it was refused, not run late.
    let err = old.await.expect("join").expect_err("the old job cannot make it");
    assert!(matches!(err, Error::Overloaded(OverloadReason::DeadlineExceeded)), "{err}");
    let calls = paced.calls.lock().expect("lock").clone();
    assert_eq!(calls, vec![1, 1, 4], "warm-up, the busy text, then the four newer texts as one batch");
}
