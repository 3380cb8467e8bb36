//! Selector forward pass for one request, as serving runs it.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use router_model::{
    Architecture, Checkpoint, CheckpointMeta, EmbedderRef, FeatureNorm, RequestFeatures, Selector,
};

fn predict(c: &mut Criterion) {
    let candidates: Vec<String> = (0..11).map(|i| format!("model-{i}")).collect();
    let arch = Architecture::new(384, candidates.len());
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Selector::new(vb, &arch).expect("build");
    let meta = CheckpointMeta::new(
        arch,
        candidates,
        FeatureNorm::identity(RequestFeatures::LEN),
        EmbedderRef {
            id: "bench".into(),
            dim: 384,
        },
        "none",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ckpt");
    Checkpoint::save(&path, &varmap, &meta).expect("save");
    let ckpt = Checkpoint::load(&path, "bench", 384).expect("load");
    let embedding: Vec<f32> = (0..384).map(|i| (i as f32 * 0.1).sin() / 14.0).collect();
    let features = RequestFeatures::for_prompt("How do I reverse a linked list?");
    c.bench_function("selector_predict_11_candidates", |b| {
        b.iter(|| ckpt.predict(&embedding, &features).expect("predict"))
    });
}

criterion_group!(benches, predict);
criterion_main!(benches);
