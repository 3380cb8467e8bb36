//! A selector trained in the test on a task whose right answer is known: code prompts are
//! best served by `coder`, chit-chat by `chatter` (or the reverse, for the swapped one).
//! Shared by the routing and the two-replica tests.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use router_model::selector::{input_row, loss};
use router_model::{
    Architecture, BertEmbedder, Checkpoint, CheckpointMeta, Embedder, EmbedderRef, FeatureNorm, LossWeights,
    RequestFeatures, Selector, Targets,
};

pub const TRAIN_CODE: &[&str] = &[
    "Write a Python function that reverses a linked list",
    "Fix this Rust borrow checker error in my iterator",
    "How do I implement quicksort in C++?",
    "Write a SQL query joining orders and customers by id",
    "Refactor this JavaScript class to use async/await",
    "Implement a binary search tree insert method in Java",
    "Why does my Go program deadlock on this channel?",
    "Write a bash script that renames all .txt files",
    "Parse JSON in TypeScript with proper type guards",
    "Write a regex that validates IPv4 addresses",
    "Implement LRU cache in Python with O(1) operations",
    "Debug this segfault in my C pointer arithmetic",
    "Write unit tests for a Rust function that parses dates",
    "Convert this recursive Fibonacci function to dynamic programming",
    "How do I read a CSV file with pandas and group by a column?",
    "Write a Dockerfile for a Node.js web server",
];
pub const TRAIN_CHAT: &[&str] = &[
    "How was your weekend?",
    "Tell me a joke about cats",
    "What is your favourite colour?",
    "I feel a bit tired today, any tips to cheer up?",
    "Recommend a good movie for a rainy evening",
    "What should I cook for dinner tonight?",
    "Say something nice to my friend who just got a new job",
    "Do you like music? What kind?",
    "Write a short birthday message for my grandmother",
    "What are fun things to do in Paris on a sunny day?",
    "Hi there! How are you doing?",
    "Give me a fun fact about penguins",
    "What's a good name for a golden retriever puppy?",
    "Help me plan a relaxing Sunday",
    "Which is better for a picnic, sandwiches or salads?",
    "Tell me a bedtime story about a dragon",
];
pub const TEST_CODE: &[&str] = &[
    "Write a Python function to merge two sorted arrays",
    "How do I fix a null pointer exception in my Java stream pipeline?",
    "Implement a thread-safe queue in Rust using a mutex",
];
pub const TEST_CHAT: &[&str] = &[
    "What's a nice gift for my dad who loves gardening?",
    "Tell me something funny about dogs",
    "How do I make my weekend more relaxing?",
];

pub const CANDIDATES: [&str; 2] = ["coder", "chatter"];

pub fn embedder() -> &'static BertEmbedder {
    static EMBEDDER: OnceLock<BertEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        BertEmbedder::load_default().expect("embedder weights (run scripts/fetch-model.sh)")
    })
}

/// Trains a selector where `coder` is good at code and `chatter` at chit-chat (or the
/// reverse, with `swapped`), and writes the checkpoint to `dir`.
pub fn train_checkpoint(dir: &Path, swapped: bool) {
    let embedder = embedder();
    let mut texts: Vec<(&str, bool)> = TRAIN_CODE.iter().map(|t| (*t, true)).collect();
    texts.extend(TRAIN_CHAT.iter().map(|t| (*t, false)));
    let embeddings = embedder
        .embed_batch(&texts.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .expect("embed");
    let features: Vec<RequestFeatures> = texts.iter().map(|(t, _)| RequestFeatures::for_prompt(t)).collect();
    let norm = FeatureNorm::fit(&features.iter().map(RequestFeatures::to_vec).collect::<Vec<_>>());
    let mut rows = Vec::new();
    let mut quality = Vec::new();
    for ((embedding, features), (_, is_code)) in embeddings.iter().zip(&features).zip(&texts) {
        rows.extend(input_row(embedding, features, &norm));
        let (coder, chatter) = if *is_code { (0.95f32, 0.1) } else { (0.3, 0.95) };
        if swapped {
            quality.extend([chatter, coder]);
        } else {
            quality.extend([coder, chatter]);
        }
    }
    let n = texts.len();
    let c = CANDIDATES.len();
    let dev = Device::Cpu;
    let ones = Tensor::ones((n, c), DType::F32, &dev).expect("tensor");
    let difficulty: Vec<f32> = quality.chunks(c).map(|q| q.iter().sum::<f32>() / c as f32).collect();
    let targets = Targets {
        quality: Tensor::from_vec(quality, (n, c), &dev).expect("tensor"),
        quality_mask: ones.clone(),
        log_latency_ms: (ones.clone() * 1000f64.ln()).expect("tensor"),
        latency_mask: ones.clone(),
        log_output_tokens: (ones.clone() * 200f64.ln()).expect("tensor"),
        tokens_mask: ones.clone(),
        difficulty: Tensor::from_vec(difficulty, n, &dev).expect("tensor"),
        difficulty_mask: Tensor::ones(n, DType::F32, &dev).expect("tensor"),
    };
    let input_dim = embedder.dim() + RequestFeatures::LEN;
    let input = Tensor::from_vec(rows, (n, input_dim), &dev).expect("tensor");
    let arch = Architecture {
        hidden_dims: vec![64],
        ..Architecture::new(embedder.dim(), c)
    };
    let varmap = VarMap::new();
    let selector = Selector::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &arch).expect("selector");
    let mut optimizer = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 5e-3, ..ParamsAdamW::default() }).expect("opt");
    for _ in 0..300 {
        let out = selector.forward_t(&input, true).expect("forward");
        let l = loss(&out, &targets, &LossWeights::default()).expect("loss");
        optimizer.backward_step(&l).expect("step");
    }
    let meta = CheckpointMeta::new(
        arch,
        CANDIDATES.iter().map(|s| s.to_string()).collect(),
        norm,
        EmbedderRef { id: embedder.id().to_owned(), dim: embedder.dim() },
        if swapped { "test:swapped" } else { "test:code-vs-chat" },
    );
    Checkpoint::save(dir, &varmap, &meta).expect("save checkpoint");
}

/// Checkpoints trained once per test binary: (normal, swapped).
pub fn checkpoints() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = tempfile::tempdir().expect("tmp").keep();
        let (normal, swapped) = (root.join("normal"), root.join("swapped"));
        train_checkpoint(&normal, false);
        train_checkpoint(&swapped, true);
        (normal, swapped)
    })
}

pub fn copy_checkpoint(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for file in ["selector.safetensors", "selector.json"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy");
    }
}
