//! The challenger's reward model on a production-sized judgement: every judged row's
//! neighbour estimate for every model (`training::db::NearestRows`), as `switchyard learn`
//! computes it before the doubly robust estimate.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use router_model::policy::Tradeoff;
use training::db::{LoggedRequest, NearestRows};

const DIM: usize = 384;
const MODELS: [&str; 3] = ["gpt-4", "gpt-3.5", "mixtral"];

/// A pseudo-random embedding (a fixed linear congruential stream), so runs compare.
fn embedding(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..DIM)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn served(i: u64, model: &str) -> LoggedRequest {
    LoggedRequest {
        id: i.to_string(),
        created_at: format!("{i:08}"),
        route: Some("auto".into()),
        model: model.into(),
        candidates: Vec::new(),
        propensity: Some(0.5),
        embedding: Some(embedding(i)),
        prompt_text: None,
        prompt_tokens: Some(100),
        completion_tokens: Some(200),
        latency_ms: 800.0,
        status: 200,
        feedback: Some((i % 2) as f64),
        feedback_count: 1,
        cost_usd: Some(0.002),
        tradeoff: Some(Tradeoff::BALANCED),
    }
}

fn reward_model(c: &mut Criterion) {
    const SERVED_PER_MODEL: u64 = 3_000;
    const JUDGED: u64 = 1_000;
    let reference: Vec<LoggedRequest> = (0..SERVED_PER_MODEL * MODELS.len() as u64).map(|i| served(i, MODELS[(i % 3) as usize])).collect();
    let nearest = NearestRows::from_rows(&reference, DIM);
    let judged: Vec<Vec<f32>> = (0..JUDGED).map(|i| embedding(1_000_000 + i)).collect();
    let queries: Vec<Option<&[f32]>> = judged.iter().map(|e| Some(e.as_slice())).collect();
    let mut group = c.benchmark_group("judge");
    group.sample_size(10);
    group.bench_function("nearest_rows_1000_judged_x_3_models_x_3000_served", |b| {
        b.iter(|| nearest.estimate_rows(&queries).expect("estimates"))
    });
    group.finish();
}

criterion_group!(benches, reward_model);
criterion_main!(benches);
