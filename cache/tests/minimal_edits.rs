//! The shipped verifier on hand-written LLM-style prompt pairs: answer-changing minimal
//! edits (label 0) must never hit; true paraphrases (label 1) should mostly hit.
//!
//! Real MiniLM weights (`.cache/models/all-MiniLM-L6-v2`, see scripts/fetch-model.sh) and the
//! real checkpoint in `models/verifier/default`.

#![allow(clippy::expect_used)]

use cache::verifier::{cosine, default_checkpoint_dir, lexical_veto, Verifier};
use router_model::{BertEmbedder, Embedder};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text_a: String,
    text_b: String,
    label: u8,
    kind: String,
}

/// Paraphrase share the shipped checkpoint must keep (measured: see cache/README.md).
const PARAPHRASE_RECALL_FLOOR: f32 = 0.70;

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/minimal_edits.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

#[test]
fn fixture_has_enough_of_both_kinds() {
    let cases = cases();
    assert!(cases.len() >= 60, "{}", cases.len());
    let neg = cases.iter().filter(|c| c.label == 0).count();
    assert!(neg >= 40 && cases.len() - neg >= 30, "{neg} edits");
}

#[test]
fn minimal_edits_never_hit_and_paraphrases_do() {
    let embedder = BertEmbedder::load_default().expect("MiniLM weights (scripts/fetch-model.sh)");
    let verifier = Verifier::load(&default_checkpoint_dir()).expect("shipped verifier checkpoint");
    check_fixture(&embedder, &verifier, PARAPHRASE_RECALL_FLOOR);
}

/// Token vectors come from the same forward pass as the pooled vector.
#[test]
fn token_states_pool_to_the_sentence_embedding() {
    let embedder = BertEmbedder::load_default().expect("MiniLM weights (scripts/fetch-model.sh)");
    let texts = [
        "Why do Poles dislike Russians?",
        "Sort a list in descending order, please, in Rust",
    ];
    let states = embedder
        .embed_with_token_states(&texts)
        .expect("token states");
    for (text, s) in texts.iter().zip(&states) {
        let pooled = embedder.embed(text).expect("embed");
        assert!(cosine(&pooled, &s.pooled) > 0.99999, "{text}");
        let ids = embedder.tokenize(text).expect("tokenize");
        assert_eq!(s.tokens.len(), ids.len() - 2, "{text}");
        for t in &s.tokens {
            let norm: f32 = t.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
    }
}

fn check_fixture(embedder: &BertEmbedder, verifier: &Verifier, floor: f32) {
    let t = verifier.threshold();
    let cases = cases();
    let mut false_hits = Vec::new();
    let (mut hits, mut positives) = (0usize, 0usize);
    let mut cos_neg = Vec::new();
    let mut cos_pos = Vec::new();
    let mut missed = Vec::new();
    for c in &cases {
        let e = embedder
            .embed_batch(&[&c.text_a, &c.text_b])
            .expect("embed");
        let cos = cosine(&e[0], &e[1]);
        // Symmetric: either side may be the cached one.
        let s = verifier
            .score(&c.text_a, &c.text_b, &e[0], &e[1])
            .max(verifier.score(&c.text_b, &c.text_a, &e[1], &e[0]));
        if c.label == 0 {
            cos_neg.push(cos);
            if s >= t {
                false_hits.push(format!(
                    "{:?} / {:?} ({}, score {s:.3})",
                    c.text_a, c.text_b, c.kind
                ));
            }
        } else {
            positives += 1;
            cos_pos.push(cos);
            if s >= t {
                hits += 1;
            } else {
                missed.push(format!(
                    "{:?} / {:?} score {s:.3} veto {:?}",
                    c.text_a,
                    c.text_b,
                    lexical_veto(&c.text_a, &c.text_b)
                ));
            }
        }
    }
    let recall = hits as f32 / positives as f32;
    // Plain cosine at the threshold giving the same paraphrase recall.
    let mut sorted = cos_pos.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cos_t = sorted.get(hits.saturating_sub(1)).copied().unwrap_or(1.0);
    let cos_false = cos_neg.iter().filter(|&&c| c >= cos_t).count();
    eprintln!(
        "verifier threshold {t:.3}: paraphrase hits {hits}/{positives} ({:.0}%), false hits {}/{}",
        100.0 * recall,
        false_hits.len(),
        cos_neg.len()
    );
    eprintln!(
        "plain cosine at the same paraphrase recall (threshold {cos_t:.3}): {cos_false}/{} wrong answers served",
        cos_neg.len()
    );
    for m in &missed {
        eprintln!("missed paraphrase: {m}");
    }
    assert!(false_hits.is_empty(), "false hits: {false_hits:#?}");
    assert!(
        recall >= floor,
        "paraphrase recall {recall:.2} below {floor}"
    );
}

/// `switchyard eval cache` end to end on the fixture: one `{"i", "sim"}` line per pair, an SVG,
/// and the shipped operating point serving no wrong answer.
#[test]
fn eval_cache_writes_scores_and_plot() {
    use cache::verifier::{eval_cache, EvalCacheOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let pairs =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minimal_edits.jsonl");
    let options = EvalCacheOptions {
        pairs,
        output: Some(dir.path().join("sims.jsonl")),
        plot: Some(dir.path().join("pr.svg")),
        verifier_dir: Some(default_checkpoint_dir()),
        ..Default::default()
    };
    let report = eval_cache(&options).expect("eval");
    assert_eq!((report.pairs, report.positives), (100, 40));
    assert_eq!(report.score_kind, "verifier");
    let op = report.operating_point.expect("operating point");
    assert_eq!(op.false_pos, 0, "{op:?}");
    let sims = std::fs::read_to_string(dir.path().join("sims.jsonl")).expect("sims");
    let lines: Vec<serde_json::Value> = sims
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[99]["i"], 99);
    assert!(lines
        .iter()
        .all(|l| l["sim"].as_f64().is_some_and(|s| (0.0..=1.0).contains(&s))));
    let svg = std::fs::read_to_string(dir.path().join("pr.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("verifier") && svg.contains("plain cosine"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text_a\": \"x\"}\n").expect("write");
    let err = eval_cache(&EvalCacheOptions {
        pairs: bad,
        ..Default::default()
    });
    assert!(err.is_err());
}
