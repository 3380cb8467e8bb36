//! Memory and latency of a serving process: loads the embedder and a selector the size the
//! gateway runs (384-d, 11 candidates), embeds a few prompts through the service, predicts,
//! and prints VmRSS / VmHWM from /proc/self/status plus single-request latencies.
//!
//!     cargo run --release -p router-model --example footprint
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use router_model::{
    Architecture, BertEmbedder, Checkpoint, CheckpointMeta, Embedder, EmbedderRef,
    EmbeddingService, FeatureNorm, RequestFeatures, Selector, ServiceConfig,
};

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    router_model::configure_cpu_threads();
    println!("start: VmRSS {}", status("VmRSS:"));
    let t = Instant::now();
    let embedder = Arc::new(BertEmbedder::load_default().expect("run scripts/fetch-model.sh"));
    println!(
        "embedder loaded in {:?}: VmRSS {}",
        t.elapsed(),
        status("VmRSS:")
    );
    let dim = embedder.dim();
    let id = embedder.id().to_string();

    let candidates: Vec<String> = (0..11).map(|i| format!("model-{i}")).collect();
    let arch = Architecture::new(dim, candidates.len());
    let varmap = VarMap::new();
    Selector::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &arch,
    )
    .expect("selector");
    let meta = CheckpointMeta::new(
        arch,
        candidates,
        FeatureNorm::identity(RequestFeatures::LEN),
        EmbedderRef {
            id: id.clone(),
            dim,
        },
        "none",
    );
    let dir = std::env::temp_dir().join(format!("footprint-ckpt-{}", std::process::id()));
    Checkpoint::save(&dir, &varmap, &meta).expect("save");
    drop(varmap);
    let checkpoint = Checkpoint::load(&dir, &id, dim).expect("load");
    let _ = std::fs::remove_dir_all(&dir);

    let t = Instant::now();
    let service = EmbeddingService::start(embedder, ServiceConfig::default()).expect("service");
    println!("service started (warm-up included) in {:?}", t.elapsed());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let prompts = [
        "How do I reverse a linked list in Rust?",
        "Write a haiku about the sea.",
        "Explain the CAP theorem with an example from a real database.",
        "Quelle est la capitale de l'Australie ?",
        "def add(a, b):\n    return a + b\n# why does this fail on strings?",
    ];
    let mut latencies = Vec::new();
    rt.block_on(async {
        for round in 0..4 {
            for p in prompts {
                let text = format!("{p} (round {round})");
                let t = Instant::now();
                let v = service
                    .embed(&text, Instant::now() + Duration::from_secs(5))
                    .await
                    .expect("embed");
                let predictions = checkpoint
                    .predict(&v, &RequestFeatures::for_prompt(&text))
                    .expect("predict");
                latencies.push(t.elapsed());
                assert_eq!(predictions.len(), 11);
            }
        }
    });
    latencies.sort();
    println!(
        "embed+predict of fresh short prompts: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    println!(
        "after load + {} embeds: VmRSS {}, VmHWM (peak) {}",
        latencies.len(),
        status("VmRSS:"),
        status("VmHWM:")
    );
}
