//! The wrong-hit bound on real near-duplicate questions: the 313 candidates the shipped
//! verifier passes on the Quora validation part (split by question, never trained on; fixture
//! `fixtures/qqp_validation_hits_audit.jsonl`, scores checked against the live verifier by
//! `audited_hits.rs`) arrive in a random order; the calibrator serves or audits each, an audit
//! reveals whether the pair was wrong, and a served wrong pair is a wrong answer served.
//!
//! Two truths: the hand audit ("wrong" or "borderline" counts as wrong: 11 of 313) and Quora's
//! labels (30 of 313 called different, some of them reworded duplicates). Audits here reveal
//! the truth exactly; in the gateway they compare answers, which errs towards "wrong".

#![allow(clippy::expect_used)]

use cache::calibration::{wilson_upper, Calibrator, Evidence, Verdict};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

#[derive(Deserialize)]
struct Candidate {
    quora_label: u8,
    verifier_score: f32,
    audit: String,
    /// Set on pairs audited after the first 313 (those below the shipped threshold).
    #[serde(default)]
    audited: Option<String>,
}

struct Run {
    served: usize,
    wrong_served: usize,
    audits: usize,
    /// Served a candidate at a threshold whose wrong rate over all 313 candidates at or above
    /// it exceeds the bound: the event the bound's 95% confidence is about.
    served_unsafely: bool,
}

/// The wrong rate over every candidate scoring at or above `threshold`.
fn population_rate(candidates: &[(f32, bool)], threshold: f32) -> f64 {
    let at: Vec<bool> = candidates.iter().filter(|c| c.0 >= threshold).map(|c| c.1).collect();
    at.iter().filter(|w| **w).count() as f64 / at.len().max(1) as f64
}

fn stream(candidates: &[(f32, bool)], bound: f64, audit_share: f64, seed: u64) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.shuffle(&mut rng);
    let calibrator = Calibrator::new();
    let mut run = Run { served: 0, wrong_served: 0, audits: 0, served_unsafely: false };
    for i in order {
        let (score, wrong) = candidates[i];
        match calibrator.decide("all", bound, score, audit_share, rng.random::<f64>()) {
            Verdict::Serve => {
                run.served += 1;
                run.wrong_served += usize::from(wrong);
                let threshold = calibrator.status()[0].threshold.expect("serving at a threshold");
                run.served_unsafely |= population_rate(candidates, threshold) > bound;
            }
            Verdict::Audit => {
                run.audits += 1;
                calibrator.observe("all", bound, score, wrong, Evidence::Audit);
            }
        }
    }
    run
}

#[test]
fn served_hits_keep_the_bound_on_quora_pairs_never_tuned_on() {
    let fixture: Vec<Candidate> = include_str!("fixtures/qqp_validation_hits_audit.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Candidate>(l).expect("fixture line"))
        // The 313 the shipped threshold passed when first audited (guards added since remove
        // a few in the gateway; the calibrator's behaviour on this stream is what is tested).
        .filter(|c| c.audited.is_none())
        .collect();
    assert_eq!(fixture.len(), 313);
    let by_audit: Vec<(f32, bool)> = fixture.iter().map(|c| (c.verifier_score, c.audit != "same")).collect();
    let by_label: Vec<(f32, bool)> = fixture.iter().map(|c| (c.verifier_score, c.quora_label == 0)).collect();
    const ORDERS: u64 = 300;
    let mut failures = Vec::new();
    eprintln!("truth        bound  served/313 (mean)  audits  wrong among served (pooled)  orders served unsafely  pooled 95% upper");
    for (truth, candidates) in [("hand audit", &by_audit), ("Quora label", &by_label)] {
        let base = candidates.iter().filter(|c| c.1).count() as f64 / candidates.len() as f64;
        for bound in [0.05, 0.1] {
            let runs: Vec<Run> = (0..ORDERS).map(|seed| stream(candidates, bound, 0.05, seed)).collect();
            let served: usize = runs.iter().map(|r| r.served).sum();
            let wrong: usize = runs.iter().map(|r| r.wrong_served).sum();
            let audits: usize = runs.iter().map(|r| r.audits).sum();
            let unsafe_orders = runs.iter().filter(|r| r.served_unsafely).count();
            let pooled = if served == 0 { 0.0 } else { wrong as f64 / served as f64 };
            eprintln!(
                "{truth:<12} {bound:.2}   {:>6.1}             {:>6.1}  {pooled:.4} (all candidates: {base:.4})       {unsafe_orders:>3} / {ORDERS}               {:.4}",
                served as f64 / ORDERS as f64,
                audits as f64 / ORDERS as f64,
                wilson_upper(wrong, served)
            );
            // The operator's bound holds for what was served, over all orders together …
            // The bound's confidence: serving at a threshold that is unsafe over the whole
            // population happens in at most 5% of orders, though the threshold is re-tested
            // after every observation.
            if unsafe_orders as f64 > 0.05 * ORDERS as f64 {
                failures.push(format!("{truth} at {bound}: {unsafe_orders} of {ORDERS} orders served unsafely"));
            }
            // Where the population keeps the bound with room (its rate ≤ ¾ of it), the
            // calibrated cache still serves: the bound costs hits, not the semantic tier.
            if base <= 0.75 * bound && (served as f64 / ORDERS as f64) < 0.2 * candidates.len() as f64 {
                failures.push(format!("{truth} at {bound}: served only {served} in {ORDERS} orders"));
            }
            // What was served keeps the bound whenever no order served unsafely.
            if unsafe_orders == 0 && pooled > bound {
                failures.push(format!("{truth} at {bound}: {wrong} wrong of {served} served"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
