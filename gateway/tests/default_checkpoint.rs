//! The shipped selector checkpoint (`models/selector/default`, written by `switchyard train`)
//! loads under the serving embedder and scores prompts sensibly.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use std::path::PathBuf;

use router_model::canonical_model_id;
use router_model::{BertEmbedder, Checkpoint, Embedder, RequestFeatures};

fn default_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/selector/default")
}

#[test]
fn default_checkpoint_scores_a_prompt() {
    let embedder = BertEmbedder::load_default().expect("embedder weights (run scripts/fetch-model.sh)");
    let checkpoint = Checkpoint::load(default_dir(), embedder.id(), embedder.dim()).expect("load models/selector/default");
    let candidates = checkpoint.candidates().to_vec();
    for id in ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1", "llama-2-70b-chat", "claude-2"] {
        assert!(candidates.iter().any(|c| c == id), "{id} has no head");
    }
    // The gateway maps configured models to heads with its own canonical ids: every shipped
    // id must be one (the training crate keeps a copy of the mapping).
    for c in &candidates {
        assert_eq!(&canonical_model_id(c), c, "candidate id is not canonical");
    }

    let prompts = [
        "Write a Python function that returns the n-th Fibonacci number using memoization.",
        "The trophy doesn't fit into the brown suitcase because _ is too large.\nA) trophy\nB) suitcase",
    ];
    for prompt in prompts {
        let embedding = embedder.embed(prompt).expect("embed");
        let (predictions, difficulty) = checkpoint
            .predict_with_difficulty(&embedding, &RequestFeatures::for_prompt(prompt))
            .expect("predict");
        assert_eq!(predictions.len(), candidates.len());
        assert!((0.0..=1.0).contains(&difficulty));
        for (p, id) in predictions.iter().zip(&candidates) {
            assert_eq!(&p.model_id, id);
            assert!(p.quality.is_finite() && (0.0..=1.0).contains(&p.quality), "{p:?}");
            assert!(p.latency_ms.is_finite() && p.latency_ms > 0.0, "{p:?}");
            assert!(p.output_tokens.is_finite() && p.output_tokens >= 1.0 && p.output_tokens < 100_000.0, "{p:?}");
        }
    }

    // Test-split metrics travel with the checkpoint.
    let pairs = checkpoint.meta.metrics["test"]["pairs"].as_array().expect("test pairs");
    let routerbench = pairs.iter().find(|p| p["dataset"] == "routerbench").expect("RouterBench pair");
    assert_eq!(routerbench["strong"], "gpt-4-1106-preview");
    assert!(routerbench["router"]["apgr"].as_f64().is_some_and(|a| a > 0.0 && a <= 1.0));
}
