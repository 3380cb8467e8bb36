//! Metrics of a quality–cost trade-off: the non-decreasing convex hull, AIQ (RouterBench,
//! arXiv 2403.12031), reliability bins and percentiles.
//!
//! The strong/weak metrics (PGR, APGR, CPT as RouteLLM, arXiv 2406.18665, defines them) are
//! the training crate's, re-exported here so there is one definition that training's
//! end-of-run table and these reports both use.

use serde::Serialize;

pub use training::eval::{pair_report, pgr, random_curve, ranking, routing_curve, PairReport, RoutingCurve};

/// Mean quality and mean cost (USD per request) of one way of routing a set of prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub cost: f64,
    pub quality: f64,
}

/// The non-decreasing upper convex hull of `points`, cheapest first: what can be reached by
/// mixing any two of them at random (RouterBench's "non-decreasing convex hull"). A point is
/// kept only if no cheaper one is at least as good, and no mix of two others beats it.
pub fn upper_hull(points: &[Point]) -> Vec<Point> {
    let mut sorted: Vec<Point> = points.iter().copied().filter(|p| p.cost.is_finite() && p.quality.is_finite()).collect();
    // Cheapest first; at equal cost the best first, so the others are dropped below.
    sorted.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)));
    let mut hull: Vec<Point> = Vec::new();
    for p in sorted {
        if hull.last().is_some_and(|last| p.quality <= last.quality) {
            continue; // costs at least as much, is no better
        }
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // Drop b when it lies on or below the segment a → p.
            let cross = (b.cost - a.cost) * (p.quality - a.quality) - (b.quality - a.quality) * (p.cost - a.cost);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// The hull's quality at `cost`: linear between its points, flat beyond its ends.
pub fn hull_quality(hull: &[Point], cost: f64) -> f64 {
    let (Some(first), Some(last)) = (hull.first(), hull.last()) else { return 0.0 };
    if cost <= first.cost {
        return first.quality;
    }
    if cost >= last.cost {
        return last.quality;
    }
    for w in hull.windows(2) {
        let (a, b) = (w[0], w[1]);
        if cost <= b.cost {
            let t = (cost - a.cost) / (b.cost - a.cost);
            return a.quality + t * (b.quality - a.quality);
        }
    }
    last.quality
}

/// AIQ: the area under the non-decreasing convex hull of `points` over the cost range
/// `lo..hi`, divided by the range's width, i.e. the hull's mean quality over that range. The
/// hull is extended flat past its ends (spending more than the best point needs buys nothing;
/// a curve that starts above `lo` is credited its cheapest point's quality there, which only
/// flatters such a curve). A range of zero width gives the hull's quality at `lo`, so a single
/// model's AIQ over its own cost is its quality.
pub fn aiq(points: &[Point], lo: f64, hi: f64) -> f64 {
    let hull = upper_hull(points);
    if hull.is_empty() {
        return 0.0;
    }
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return hull_quality(&hull, lo);
    }
    // Exact integral of a piecewise-linear function: breakpoints are the range ends and the
    // hull's points inside it.
    let mut xs = vec![lo];
    xs.extend(hull.iter().map(|p| p.cost).filter(|&c| c > lo && c < hi));
    xs.push(hi);
    let area: f64 = xs
        .windows(2)
        .map(|w| (w[1] - w[0]) * (hull_quality(&hull, w[0]) + hull_quality(&hull, w[1])) / 2.0)
        .sum();
    area / (hi - lo)
}

/// One reliability bin: predictions in `lo..hi` and what was observed for them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub mean_observed: f64,
}

/// Reliability bins of predicted against observed quality.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub bins: Vec<Bin>,
    /// Expected calibration error: the count-weighted mean |predicted − observed| over bins.
    pub ece: f64,
    pub pairs: usize,
}

/// Bins `predicted` (0..1) into `bins` equal-width bins and compares with `observed`.
pub fn calibration(predicted: &[f64], observed: &[f64], bins: usize) -> Calibration {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0f64, 0f64); bins];
    for (&p, &o) in predicted.iter().zip(observed) {
        let i = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[i].0 += 1;
        sums[i].1 += p;
        sums[i].2 += o;
    }
    let pairs: usize = sums.iter().map(|s| s.0).sum();
    let out: Vec<Bin> = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(i, &(count, p, o))| Bin {
            lo: i as f64 / bins as f64,
            hi: (i + 1) as f64 / bins as f64,
            count,
            mean_predicted: p / count as f64,
            mean_observed: o / count as f64,
        })
        .collect();
    let ece = if pairs == 0 {
        0.0
    } else {
        out.iter().map(|b| b.count as f64 * (b.mean_predicted - b.mean_observed).abs()).sum::<f64>() / pairs as f64
    };
    Calibration { bins: out, ece, pairs }
}

/// The `q`-quantile (0..1) of `values` by the nearest-rank method; `None` when empty.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
