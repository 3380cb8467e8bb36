//! The verifier's precision by hand audit, on Quora pairs it was never fitted on (split by
//! question). Every pair the verifier accepts down to score 0.8332 was read by hand, blind to
//! Quora's label, and marked `same`, `borderline` (answers most of the other: one asks a little
//! more, a qualifier, a referent that is not shown) or `wrong` (would the cached answer to one
//! question answer the other?):
//! - `fixtures/qqp_validation_hits_audit.jsonl`: the validation part (the first 313 pairs, the
//!   hits at the 0.877 threshold, on 2026-12-02; the 165 between 0.8332 and 0.877 on
//!   2026-12-05, `audited`);
//! - `fixtures/qqp_calibration_hits_audit.jsonl`: the calibration part's 207 (2026-12-05).
//!
//! Pairs come from `../shared/data/qqp-pairs/pairs.jsonl` (`source_line` = its line number;
//! see cache/README.md). 0.8332 is where the verifier reaches recall 0.30 by Quora's labels on
//! the calibration part. Quora's labels put the precision of the shipped hits near 0.90; they
//! mark reworded duplicates as different and some different questions as duplicates.
//!
//! The test re-scores every pair with the real embedder and verifier, so a verifier change that
//! moves a score fails here until the audit is redone (a guard added since an audit can only
//! remove a hit), and measures the audited precision along the threshold.

#![allow(clippy::expect_used)]

use cache::verifier::{default_checkpoint_dir, lexical_veto, Verifier};
use router_model::{BertEmbedder, Embedder};
use serde::Deserialize;

#[derive(Deserialize)]
struct Audited {
    text_a: String,
    text_b: String,
    quora_label: u8,
    verifier_score: f32,
    audit: String,
}

/// Quora duplicates in the validation part (by its label): the denominator of recall.
const VALIDATION_DUPLICATES: usize = 1350;
/// Quora duplicates in the calibration part.
const CALIBRATION_DUPLICATES: usize = 609;
/// The lowest score audited: every pair at or above it is in the fixture.
const AUDITED_DOWN_TO: f32 = 0.8332;

fn audited(fixture: &str) -> Vec<Audited> {
    fixture
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

/// An audited pair as the verifier scores it now; `None` when a guard added since removes it.
struct Rescored<'a> {
    pair: &'a Audited,
    score: f32,
}

fn rescore<'a>(embedder: &BertEmbedder, verifier: &Verifier, pairs: &'a [Audited]) -> (Vec<Rescored<'a>>, Vec<String>) {
    let (mut kept, mut vetoed) = (Vec::new(), Vec::new());
    for p in pairs {
        let e = embedder.embed_batch(&[&p.text_a, &p.text_b]).expect("embed");
        let score = verifier.score(&p.text_a, &p.text_b, &e[0], &e[1]);
        if score == 0.0 {
            if let Some(reason) = lexical_veto(&p.text_a, &p.text_b) {
                vetoed.push(format!("{} ({reason}): {:?} / {:?}", p.audit, p.text_a, p.text_b));
                continue;
            }
        }
        assert!(
            (score - p.verifier_score).abs() < 2e-3,
            "{:?} / {:?}: score {score} vs {} when audited: redo the audit for this verifier",
            p.text_a,
            p.text_b,
            p.verifier_score
        );
        kept.push(Rescored { pair: p, score });
    }
    (kept, vetoed)
}

/// Hits at `threshold`, audited precision strict (borderline counted wrong) and lenient, and
/// recall by Quora's labels.
struct Point {
    hits: usize,
    strict: f64,
    lenient: f64,
    recall: f64,
}

fn at(rescored: &[Rescored<'_>], threshold: f32, duplicates: usize) -> Point {
    let hits: Vec<&Rescored<'_>> = rescored.iter().filter(|r| r.score >= threshold).collect();
    let n = hits.len().max(1) as f64;
    Point {
        hits: hits.len(),
        strict: hits.iter().filter(|r| r.pair.audit == "same").count() as f64 / n,
        lenient: hits.iter().filter(|r| r.pair.audit != "wrong").count() as f64 / n,
        recall: hits.iter().filter(|r| r.pair.quora_label == 1).count() as f64 / duplicates as f64,
    }
}

#[test]
fn audited_precision_of_the_shipped_operating_point_is_at_least_0975() {
    let embedder = BertEmbedder::load_default().expect("MiniLM weights (scripts/fetch-model.sh)");
    let verifier = Verifier::load(&default_checkpoint_dir()).expect("shipped verifier checkpoint");
    assert!(verifier.threshold() >= AUDITED_DOWN_TO, "the shipped threshold is below the audited range");
    let validation = audited(include_str!("fixtures/qqp_validation_hits_audit.jsonl"));
    let calibration = audited(include_str!("fixtures/qqp_calibration_hits_audit.jsonl"));
    assert_eq!((validation.len(), calibration.len()), (478, 207));
    let (val, vetoed) = rescore(&embedder, &verifier, &validation);
    let (cal, cal_vetoed) = rescore(&embedder, &verifier, &calibration);
    println!("validation hits removed by guards added since the audit: {vetoed:#?}");
    println!("calibration hits removed by guards added since the audit: {cal_vetoed:#?}");

    println!("threshold  validation: hits strict lenient recall | calibration: hits strict lenient recall");
    for threshold in [verifier.threshold(), 0.87, 0.86, 0.855, 0.85, 0.84, AUDITED_DOWN_TO] {
        let (v, c) = (at(&val, threshold, VALIDATION_DUPLICATES), at(&cal, threshold, CALIBRATION_DUPLICATES));
        println!(
            "{threshold:.4}     {:4} {:.3} {:.3} {:.3}    | {:4} {:.3} {:.3} {:.3}",
            v.hits, v.strict, v.lenient, v.recall, c.hits, c.strict, c.lenient, c.recall
        );
    }
    let shipped = at(&val, verifier.threshold(), VALIDATION_DUPLICATES);
    assert!(shipped.hits >= 290, "{} hits", shipped.hits);
    assert!(shipped.strict >= 0.975, "audited precision {:.3} at the shipped threshold", shipped.strict);
    // Where the threshold was chosen (calibration) the audit says less: held to what it was.
    let calibration_point = at(&cal, verifier.threshold(), CALIBRATION_DUPLICATES);
    assert!(calibration_point.strict >= 0.94, "calibration audited precision {:.3}", calibration_point.strict);
}
