//! Embedding speed figures for router-model/README.md: single texts of 16/64/256 tokens on
//! one and two threads (wall p50 and process CPU time per embed, the latter being robust to
//! other load on a shared machine), batched throughput on both cores, and the service's
//! fresh-request throughput.
//!
//!     cargo run --release -p router-model --example speed [-- MAX_TOKENS]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use router_model::{
    BertEmbedder, Embedder, EmbedderOptions, EmbeddingService, ModelSource, ServiceConfig, Tokens,
};

#[path = "../benches/common/mod.rs"]
mod common;

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("pool")
}

fn single(e: &BertEmbedder, pool: &rayon::ThreadPool, t: &Tokens, runs: usize) -> (f64, f64) {
    for _ in 0..3 {
        pool.install(|| e.embed_tokens(&[t]).expect("embed"));
    }
    let mut wall = Vec::new();
    let cpu0 = cpu_time();
    for _ in 0..runs {
        let s = Instant::now();
        pool.install(|| e.embed_tokens(&[t]).expect("embed"));
        wall.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = (cpu_time() - cpu0).as_secs_f64() * 1e3 / runs as f64;
    wall.sort_by(|a, b| a.total_cmp(b));
    (wall[wall.len() / 2], cpu)
}

fn main() {
    router_model::configure_cpu_threads();
    let max_tokens: usize = std::env::args()
        .nth(1)
        .map_or(256, |s| s.parse().expect("number"));
    let e = BertEmbedder::load(
        &ModelSource::default_dir(),
        &EmbedderOptions {
            max_tokens,
            ..EmbedderOptions::default()
        },
    )
    .expect("run scripts/fetch-model.sh");
    println!(
        "env: CANDLE_NUM_THREADS={:?} RAYON_NUM_THREADS={:?}",
        std::env::var("CANDLE_NUM_THREADS").ok(),
        std::env::var("RAYON_NUM_THREADS").ok()
    );
    println!("| tokens | threads | wall p50 ms | CPU ms/embed |");
    println!("|---|---|---|---|");
    for n in [16usize, 64, 256].into_iter().filter(|n| *n <= max_tokens) {
        let t = common::tokens(&e, n, 0);
        for threads in [1, 2] {
            let runs = if n >= 256 { 10 } else { 30 };
            let (p50, cpu) = single(&e, &pool(threads), &t, runs);
            println!("| {n} | {threads} | {p50:.1} | {cpu:.1} |");
        }
    }
    println!("\n| tokens | batch | embeds/s (2 threads, wall) | CPU ms/embed |");
    println!("|---|---|---|---|");
    let p2 = pool(2);
    for n in [16usize, 64, 256].into_iter().filter(|n| *n <= max_tokens) {
        let batch: Vec<Tokens> = (0..16).map(|i| common::tokens(&e, n, i * 7)).collect();
        let refs: Vec<&Tokens> = batch.iter().collect();
        p2.install(|| e.embed_tokens(&refs).expect("warm"));
        let rounds = if n >= 256 { 2 } else { 5 };
        let cpu0 = cpu_time();
        let s = Instant::now();
        for _ in 0..rounds {
            p2.install(|| e.embed_tokens(&refs).expect("embed"));
        }
        let secs = s.elapsed().as_secs_f64();
        let cpu = (cpu_time() - cpu0).as_secs_f64() * 1e3 / (rounds * 16) as f64;
        println!(
            "| {n} | 16 | {:.0} | {cpu:.1} |",
            (rounds * 16) as f64 / secs
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let service = EmbeddingService::start(Arc::new(e), ServiceConfig::default()).expect("service");
    let texts: Vec<String> = (0..256).map(|i| common::text(50, 1000 + i)).collect();
    let cpu0 = cpu_time();
    let s = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in texts {
            let svc = service.clone();
            handles.push(tokio::spawn(async move {
                svc.embed(&t, Instant::now() + Duration::from_secs(60))
                    .await
            }));
        }
        for h in handles {
            h.await.expect("join").expect("embed");
        }
    });
    let secs = s.elapsed().as_secs_f64();
    let stats = service.stats();
    println!(
        "\nservice, 256 fresh ~64-token prompts at once: {:.0} embeds/s, {:.1} CPU ms/embed, {} batches",
        256.0 / secs,
        (cpu_time() - cpu0).as_secs_f64() * 1e3 / 256.0,
        stats.batches
    );
}
