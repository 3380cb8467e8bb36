//! Cost of one verification: the lexical guards, the full default verifier (guards +
//! features + logistic regression) on precomputed embeddings, and what token alignment
//! would add (one embedder pass over both texts with token vectors out).
//!
//! `cargo bench -p cache --bench verifier` (needs the MiniLM weights and the shipped
//! checkpoint in models/verifier/default).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // benchmark harness: abort loudly

use cache::verifier::{default_checkpoint_dir, lexical_veto, pair_features, TokenPair, Verifier};
use criterion::{criterion_group, criterion_main, Criterion};
use router_model::{BertEmbedder, Embedder};
use std::hint::black_box;

const QUERY: &str = "How do I convert a string to an integer in Java without exceptions?";
const CACHED: &str = "In Java, how can I turn a string into an int without throwing an exception?";

fn bench(c: &mut Criterion) {
    let embedder = match BertEmbedder::load_default() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipping verifier bench: {e}");
            return;
        }
    };
    let qe = embedder.embed(QUERY).unwrap_or_default();
    let ce = embedder.embed(CACHED).unwrap_or_default();
    c.bench_function("lexical_veto", |b| {
        b.iter(|| lexical_veto(black_box(QUERY), black_box(CACHED)))
    });
    if let Ok(v) = Verifier::load(&default_checkpoint_dir()) {
        c.bench_function("verifier_score_default", |b| {
            b.iter(|| v.score(black_box(QUERY), black_box(CACHED), &qe, &ce))
        });
    }
    c.bench_function("embed_two_texts_pooled", |b| {
        b.iter(|| embedder.embed_batch(black_box(&[QUERY, CACHED])))
    });
    c.bench_function("embed_two_texts_with_token_states", |b| {
        b.iter(|| embedder.embed_with_token_states(black_box(&[QUERY, CACHED])))
    });
    if let Ok(states) = embedder.embed_with_token_states(&[QUERY, CACHED]) {
        c.bench_function("pair_features_with_alignment", |b| {
            b.iter(|| {
                pair_features(
                    black_box(QUERY),
                    black_box(CACHED),
                    0.9,
                    true,
                    Some(TokenPair {
                        query: &states[0].tokens,
                        cached: &states[1].tokens,
                    }),
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
