//! Cache lookup cost: exact-key hashing + hit, and semantic search within one scope of 1k,
//! 10k and 100k entries (384-d, as MiniLM), with the index's memory per 100k entries.
//!
//! `cargo bench -p cache --bench lookup`
//!
//! Vectors are random unit vectors; each query is a stored vector plus noise (cosine ~0.9),
//! the situation of a paraphrase. Random vectors are the hard case for the sign-bit
//! prefilter (real sentence embeddings cluster, which makes neighbours stand out more).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // benchmark harness: abort loudly

use std::hint::black_box;
use std::sync::Arc;

use cache::semantic::{SemanticEntry, SemanticIndex};
use cache::{exact_key, CachedAnswer, RequestParts};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};

const DIM: usize = 384;

fn unit(rng: &mut rand::rngs::StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn near(rng: &mut rand::rngs::StdRng, target: &[f32]) -> Vec<f32> {
    let noise = unit(rng);
    let v: Vec<f32> = target.iter().zip(&noise).map(|(t, z)| t + 0.48 * z).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn build(n: usize, rng: &mut rand::rngs::StdRng) -> (SemanticIndex, Vec<Vec<f32>>) {
    let index = SemanticIndex::new(DIM, n + 1, n + 1);
    let answer = Arc::new(CachedAnswer { model: "m".into(), json: Some("{}".into()), chunks: None, usage_chunk: None });
    let mut stored = Vec::with_capacity(n);
    for i in 0..n {
        let v = unit(rng);
        let mut exact_key = [0u8; 32];
        exact_key[..8].copy_from_slice(&(i as u64).to_le_bytes());
        index.insert([1; 32], &v, SemanticEntry { exact_key, query: String::new(), answer: answer.clone(), expires_at_ms: u64::MAX }, 0);
        if i % 101 == 0 {
            stored.push(v);
        }
    }
    (index, stored)
}

fn semantic(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut group = c.benchmark_group("semantic_nearest");
    for n in [1_000usize, 10_000, 100_000] {
        let (index, stored) = build(n, &mut rng);
        let queries: Vec<Vec<f32>> = stored.iter().take(64).map(|t| near(&mut rng, t)).collect();
        // Recall of the prefilter against the exact scan, on these queries.
        let agree = queries
            .iter()
            .filter(|q| {
                let exact = index.nearest_exact(&[1; 32], q).map(|e| e.0);
                let fast = index.nearest(&[1; 32], q, -1.0, 0).map(|n| n.entry.exact_key);
                exact == fast
            })
            .count();
        eprintln!(
            "scope of {n}: index {:.1} MiB ({:.0} B/entry), prefilter agrees with exact scan on {agree}/{}",
            index.index_bytes() as f64 / (1024.0 * 1024.0),
            index.index_bytes() as f64 / n as f64,
            queries.len()
        );
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(index.nearest(&[1; 32], &queries[i], 0.8, 0))
            })
        });
    }
    group.finish();
}

fn exact(c: &mut Criterion) {
    let body: serde_json::Value = serde_json::json!({
        "model": "auto", "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that answers briefly."},
            {"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number, iteratively, with a docstring."}
        ]
    });
    let map = body.as_object().cloned().unwrap_or_default();
    let cache = cache::ResponseCache::new(cache::CacheConfig { exact: true, ..cache::CacheConfig::default() }, DIM, None).expect("cache");
    let key = exact_key("tenant", &RequestParts::from_body(&map));
    let answer = CachedAnswer { model: "m".into(), json: Some("{\"choices\":[]}".into()), chunks: None, usage_chunk: None };
    cache.insert(&cache::StoredEntry { exact_key: key, scope: None, query: None, embedding: None, answer, expires_at_ms: u64::MAX }, 0);
    c.bench_function("exact_key_and_hit", |b| {
        b.iter(|| {
            let key = exact_key("tenant", &RequestParts::from_body(black_box(&map)));
            black_box(cache.lookup_exact(&key, 1))
        })
    });
}

criterion_group!(benches, exact, semantic);
criterion_main!(benches);
