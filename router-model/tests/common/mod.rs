//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use router_model::{default_model_dir, BertEmbedder};

/// The fetched model directory. Panics (fails the test) with instructions when the weights are
/// missing: CI runs scripts/fetch-model.sh first, so a missing model is a setup bug, not a skip.
pub fn model_dir() -> PathBuf {
    let dir = default_model_dir();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            dir.join(f).is_file(),
            "embedder weights missing: {} not found. Run `scripts/fetch-model.sh` from the \
             repository root (or set SWITCHYARD_EMBEDDER_DIR) before running these tests.",
            dir.join(f).display()
        );
    }
    dir
}

pub fn embedder() -> BertEmbedder {
    match BertEmbedder::from_dir(model_dir()) {
        Ok(e) => e,
        Err(e) => panic!("loading the embedder failed: {e}"),
    }
}
