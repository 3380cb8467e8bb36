//! Parity with the reference PyTorch model (sentence-transformers), from the fixture made by
//! tests/fixtures/make_reference.py.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // tests fail loudly
mod common;

use router_model::{cosine, BertEmbedder, Embedder, EmbedderOptions, ModelSource};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<String>,
    sets: Vec<Set>,
}

#[derive(Deserialize)]
struct Set {
    max_tokens: usize,
    vectors: Vec<Vec<f32>>,
}

const MIN_COSINE: f32 = 0.9999;

#[test]
fn vectors_match_sentence_transformers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference_embeddings.json"
    );
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("parse");
    assert!(fixture.texts.len() >= 20);
    let dir = common::model_dir();
    let mut long_texts = 0;
    for set in &fixture.sets {
        let embedder = BertEmbedder::load(
            &ModelSource::Dir(dir.clone()),
            &EmbedderOptions {
                max_tokens: set.max_tokens,
                ..EmbedderOptions::default()
            },
        )
        .expect("load");
        let refs: Vec<&str> = fixture.texts.iter().map(String::as_str).collect();
        // Batched in groups of 8, as the reference was, so padding is exercised.
        let mut got = Vec::new();
        for chunk in refs.chunks(8) {
            got.extend(embedder.embed_batch(chunk).expect("embed"));
        }
        let mut worst = (f32::MAX, "");
        for ((text, want), have) in fixture.texts.iter().zip(&set.vectors).zip(&got) {
            let c = cosine(want, have);
            if c < worst.0 {
                worst = (c, text);
            }
            assert!(
                c >= MIN_COSINE,
                "max_tokens={}: cosine {c} < {MIN_COSINE} for {:?}",
                set.max_tokens,
                &text[..text.len().min(60)]
            );
            if embedder.tokenize(text).expect("tokenize").len() == set.max_tokens {
                long_texts += 1;
            }
        }
        eprintln!(
            "max_tokens={}: worst cosine {:.7} ({:?})",
            set.max_tokens,
            worst.0,
            &worst.1[..worst.1.len().min(40)]
        );
    }
    assert!(
        long_texts >= 3,
        "fixture must include texts beyond the window"
    );
}
