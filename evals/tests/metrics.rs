//! The metric functions against small cases computed by hand.

#![allow(clippy::expect_used, clippy::panic)]

use evals::metrics::{aiq, calibration, percentile, pgr, random_curve, ranking, routing_curve, upper_hull, Point};

fn p(cost: f64, quality: f64) -> Point {
    Point { cost, quality }
}

#[test]
fn oracle_apgr_is_one_at_every_share_but_zero() {
    // Strong beats weak on one prompt of 20 (equal elsewhere): the oracle sends that prompt
    // first, so PGR = 1 at every share above 0. APGR averages the shares 0, 1/9, …, 1, and
    // PGR(0) = 0 by definition, so the oracle's APGR is 9/10, not 1.
    let mut strong = vec![0.5; 20];
    strong[13] = 1.0;
    let weak = vec![0.5; 20];
    let gap: Vec<f64> = strong.iter().zip(&weak).map(|(s, w)| s - w).collect();
    let oracle = routing_curve(&gap, &strong, &weak);
    assert!((oracle.apgr - 0.9).abs() < 1e-12, "{}", oracle.apgr);
    assert!((oracle.cpt50 - 0.01).abs() < 1e-12 && (oracle.cpt80 - 0.01).abs() < 1e-12, "{oracle:?}");
    // The worst ranking finds it last.
    let worst = routing_curve(&gap.iter().map(|g| -g).collect::<Vec<_>>(), &strong, &weak);
    assert!((worst.apgr - 0.1).abs() < 1e-12, "{}", worst.apgr);
}

#[test]
fn when_strong_wins_everywhere_by_the_same_margin_no_ranking_beats_random() {
    // Strong > weak on all 10 prompts by 1: PGR(s) = ⌈10 s⌉ / 10 whatever the order, so the
    // oracle's APGR is (0 + .2 + .3 + … + .9 + 1) / 10 = 0.54, the same as any ranking.
    let strong = vec![1.0; 10];
    let weak = vec![0.0; 10];
    let oracle = routing_curve(&[1.0; 10], &strong, &weak);
    assert!((oracle.apgr - 0.54).abs() < 1e-12, "{}", oracle.apgr);
    let order = ranking(&(0..10).map(f64::from).collect::<Vec<_>>());
    assert!((pgr(&order, &strong, &weak, 0.5) - 0.5).abs() < 1e-12);
    assert_eq!(pgr(&order, &strong, &weak, 0.0), 0.0);
    assert_eq!(pgr(&order, &strong, &weak, 1.0), 1.0);
}

#[test]
fn random_routing_scores_half_in_expectation() {
    // 0/1 labels from a fixed pattern, strong better on average.
    let strong: Vec<f64> = (0..300).map(|i| if i % 3 != 0 { 1.0 } else { 0.0 }).collect();
    let weak: Vec<f64> = (0..300).map(|i| if i % 5 == 0 { 1.0 } else { 0.0 }).collect();
    let r = random_curve(&strong, &weak, 400, 11);
    assert!((r.apgr - 0.5).abs() < 0.02, "random APGR {}", r.apgr);
    // A ranking by the true gap does far better on the same data: 160 gains of 1, 120 ties,
    // 20 losses over a net gap of 140, so PGR at k = ⌈300 i / 9⌉ is 0, 34/140, 67/140,
    // 100/140, 134/140, then 160/140 four times, then 1: APGR = 0.7964…
    let gap: Vec<f64> = strong.iter().zip(&weak).map(|(s, w)| s - w).collect();
    let oracle = routing_curve(&gap, &strong, &weak).apgr;
    let expected = (34.0 + 67.0 + 100.0 + 134.0 + 4.0 * 160.0 + 140.0) / 140.0 / 10.0;
    assert!((oracle - expected).abs() < 1e-12, "{oracle} vs {expected}");
}

#[test]
fn cpt_on_a_constructed_case() {
    // Gains on prompts 0 and 1; the router ranks 0, 2, 3, 1. One strong call (any share
    // up to 1/4) recovers half the gap; the second gain needs all four calls (share > 3/4).
    let strong = [1.0, 1.0, 0.0, 0.0];
    let weak = [0.0; 4];
    let c = routing_curve(&[0.9, 0.1, 0.8, 0.2], &strong, &weak);
    assert!((c.cpt50 - 0.01).abs() < 1e-12, "{c:?}");
    assert!((c.cpt80 - 0.76).abs() < 1e-12, "{c:?}");
    // Shares 0, 1/9, 2/9 → k = 0, 1, 1 → PGR 0, .5, .5; 3/9..6/9 → k = 2, 2, 3, 3 → .5;
    // 7/9, 8/9, 1 → k = 4 → 1. APGR = (0 + 6 × .5 + 3 × 1) / 10 = 0.6.
    assert!((c.apgr - 0.6).abs() < 1e-12, "{c:?}");
}

#[test]
fn aiq_of_one_model_is_its_quality() {
    assert!((aiq(&[p(0.002, 0.73)], 0.002, 0.002) - 0.73).abs() < 1e-12);
    // Flat over any range: a point is its own hull.
    assert!((aiq(&[p(0.002, 0.73)], 0.001, 0.01) - 0.73).abs() < 1e-12);
}

#[test]
fn aiq_integrates_the_non_decreasing_convex_hull() {
    // Two models (0, 0.5) and (1, 0.9); a dominated model (0.8, 0.4) and one under the
    // chord (0.5, 0.6 < 0.7) do not count. Mean of the line from 0.5 to 0.9 over 0..1 is 0.7.
    let points = [p(0.0, 0.5), p(1.0, 0.9), p(0.8, 0.4), p(0.5, 0.6)];
    assert_eq!(upper_hull(&points), vec![p(0.0, 0.5), p(1.0, 0.9)]);
    assert!((aiq(&points, 0.0, 1.0) - 0.7).abs() < 1e-12);
    // A point above the chord lifts it: hull 0.5 → 0.8 at 0.5 → 0.9; area .325 + .425.
    let lifted = [p(0.0, 0.5), p(1.0, 0.9), p(0.5, 0.8)];
    assert!((aiq(&lifted, 0.0, 1.0) - 0.75).abs() < 1e-12);
    // Beyond its dearest point the hull stays flat: over 0..2, (0.7 + 0.9) / 2.
    assert!((aiq(&points, 0.0, 2.0) - 0.8).abs() < 1e-12);
}

#[test]
fn calibration_bins_and_ece() {
    let predicted = [0.05, 0.05, 0.95, 0.95, 0.55];
    let observed = [0.0, 0.0, 1.0, 0.0, 1.0];
    let c = calibration(&predicted, &observed, 10);
    assert_eq!(c.pairs, 5);
    assert_eq!(c.bins.len(), 3);
    assert_eq!((c.bins[0].count, c.bins[0].mean_observed), (2, 0.0));
    assert!((c.bins[2].mean_observed - 0.5).abs() < 1e-12);
    // |.05 − 0| × 2 + |.55 − 1| × 1 + |.95 − .5| × 2, over 5.
    assert!((c.ece - (0.1 + 0.45 + 0.9) / 5.0).abs() < 1e-12, "{}", c.ece);
}

#[test]
fn percentiles_by_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 0.5), Some(50.0));
    assert_eq!(percentile(&v, 0.99), Some(99.0));
    assert_eq!(percentile(&[], 0.5), None);
}
