//! Embedding speed: one text on one thread, batches on both cores, tokenisation, and the
//! service's cache-hit and fresh-request paths.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router_model::{Embedder, EmbeddingService, ServiceConfig};

const LENGTHS: [usize; 3] = [16, 64, 256];

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
}

fn single(c: &mut Criterion) {
    router_model::configure_cpu_threads();
    let e = common::embedder(256);
    for threads in [1, 2] {
        let pool = pool(threads);
        let mut group = c.benchmark_group(format!("embed_single_{threads}thread"));
        for n in LENGTHS {
            let t = common::tokens(&e, n, 0);
            group.bench_with_input(BenchmarkId::from_parameter(n), &t, |b, t| {
                b.iter(|| pool.install(|| e.embed_tokens(&[t]).expect("embed")))
            });
        }
        group.finish();
    }
}

fn batched(c: &mut Criterion) {
    router_model::configure_cpu_threads();
    let e = common::embedder(256);
    let pool = pool(2);
    let mut group = c.benchmark_group("embed_batch16_2threads");
    group.sample_size(10);
    for n in LENGTHS {
        let batch: Vec<_> = (0..16).map(|i| common::tokens(&e, n, i * 7)).collect();
        let refs: Vec<_> = batch.iter().collect();
        group.throughput(Throughput::Elements(16));
        group.bench_with_input(BenchmarkId::from_parameter(n), &refs, |b, refs| {
            b.iter(|| pool.install(|| e.embed_tokens(refs).expect("embed")))
        });
    }
    group.finish();
}

fn tokenize(c: &mut Criterion) {
    router_model::configure_cpu_threads();
    let e = common::embedder(128);
    let text = common::text(50, 0);
    c.bench_function("tokenize_~64_tokens", |b| {
        b.iter(|| e.tokenize(&text).expect("tok"))
    });
}

fn service(c: &mut Criterion) {
    router_model::configure_cpu_threads();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let embedder = Arc::new(common::embedder(128));
    let service = EmbeddingService::start(embedder, ServiceConfig::default()).expect("service");
    let far = || Instant::now() + Duration::from_secs(60);
    rt.block_on(service.embed("cached prompt", far()))
        .expect("prime");
    c.bench_function("service_cache_hit", |b| {
        b.iter(|| {
            rt.block_on(service.embed("cached prompt", far()))
                .expect("hit")
        })
    });

    // Fresh ~64-token prompts, 64 in flight at once, through the whole path (hash, tokenise,
    // queue, batch, forward, cache insert, reply).
    let mut group = c.benchmark_group("service_fresh_64tok");
    group.sample_size(10);
    group.throughput(Throughput::Elements(64));
    let mut tag = 0usize;
    group.bench_function("64_concurrent", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let texts: Vec<String> = (0..64)
                    .map(|_| {
                        tag += 1;
                        common::text(50, tag)
                    })
                    .collect();
                let start = Instant::now();
                rt.block_on(async {
                    let mut handles = Vec::new();
                    for t in texts {
                        let s = service.clone();
                        handles.push(tokio::spawn(async move { s.embed(&t, far()).await }));
                    }
                    for h in handles {
                        h.await.expect("join").expect("embed");
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, single, batched, tokenize, service);
criterion_main!(benches);
