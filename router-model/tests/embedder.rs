#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // tests fail loudly
mod common;

use router_model::{cosine, Embedder};

#[test]
fn embeds_a_text_to_a_unit_vector() {
    let e = common::embedder();
    assert_eq!(e.dim(), 384);
    assert_eq!(
        e.id(),
        "sentence-transformers/all-MiniLM-L6-v2#max_tokens=128"
    );
    let v = e
        .embed("How do I reverse a linked list in Rust?")
        .expect("embed");
    assert_eq!(v.len(), 384);
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

#[test]
fn batching_and_padding_do_not_change_vectors() {
    let e = common::embedder();
    let texts = [
        "short",
        "a considerably longer sentence that needs padding for the short one in the batch",
        "Quelle est la capitale de la France ?",
    ];
    let batch = e.embed_batch(&texts).expect("batch");
    for (text, bv) in texts.iter().zip(&batch) {
        let single = e.embed(text).expect("single");
        let c = cosine(&single, bv);
        assert!(c > 0.99999, "{text}: cosine {c}");
    }
}

#[test]
fn similar_texts_are_closer_than_unrelated_ones() {
    let e = common::embedder();
    let v = e
        .embed_batch(&[
            "How do I sort a list in Python?",
            "What is the way to sort a Python list?",
            "Recipe for a chocolate cake",
        ])
        .expect("batch");
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
}

#[test]
fn truncates_to_the_configured_window() {
    let e = common::embedder();
    let long = "word ".repeat(1000);
    let t = e.tokenize(&long).expect("tokenize");
    assert_eq!(t.len(), 128);
    assert_eq!(t.ids()[0], 101, "[CLS] first");
    assert_eq!(t.ids()[127], 102, "[SEP] last");
    let short = e.tokenize("hello world").expect("tokenize");
    assert_eq!(short.len(), 4, "no fixed padding");
}

#[test]
fn huge_inputs_tokenize_quickly_and_identically() {
    let e = common::embedder();
    let huge = "The quick brown fox jumps over the lazy dog. ".repeat(50_000); // 2.2 MB
    let start = std::time::Instant::now();
    let t = e.tokenize(&huge).expect("tokenize");
    let elapsed = start.elapsed();
    assert_eq!(t.len(), 128);
    let prefix = &huge[..2000];
    assert_eq!(
        t,
        e.tokenize(prefix).expect("prefix"),
        "same window as a shorter text"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(50),
        "{elapsed:?}"
    );
}

#[test]
fn missing_model_dir_is_a_clear_error() {
    let err = router_model::BertEmbedder::from_dir("/nonexistent/model").expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains("fetch-model.sh"), "{msg}");
}
