//! Simple routers over the same MiniLM embeddings, fitted on the dataset's training prompts,
//! that a learned selector has to beat to be worth its latency (independent router benchmarks
//! find most published routers tie with a tuned kNN):
//!
//! - **kNN**: a prompt's expected quality and cost per model are the means over its k nearest
//!   training prompts (cosine); k is tuned on a validation fifth of the training prompts.
//! - **cluster** (Avengers-Pro style): spherical k-means over the training embeddings; a
//!   prompt gets its nearest centroid's per-model mean quality and cost; the number of
//!   clusters is tuned the same way.
//!
//! Both choose through the gateway's policy at each λ of the sweep, like the selector. AIQ
//! intervals come from a bootstrap over the test prompts, with each resample's own cost
//! range and cheapest model, so an interval holds the whole metric's variation.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_model::policy::{self, Scored, Tradeoff};
use serde::Serialize;

use crate::metrics::{aiq, Point};
use crate::offline::{cost_weights, tradeoff_at};

/// k values tried for kNN, and cluster counts tried for k-means.
pub const KNN_KS: &[usize] = &[5, 10, 20, 40, 80, 160, 320];
pub const CLUSTER_KS: &[usize] = &[4, 8, 16, 32, 64];
/// Bootstrap resamples of the test prompts.
pub const RESAMPLES: usize = 500;
const KMEANS_ITERATIONS: usize = 25;
const SEED: u64 = 0x5eed;

/// Labelled prompts: unit embeddings with each candidate's realised quality and cost.
pub struct Labelled<'a> {
    pub embeddings: &'a [Vec<f32>],
    pub quality: &'a [Vec<f64>],
    pub cost: &'a [Vec<f64>],
}

impl Labelled<'_> {
    fn len(&self) -> usize {
        self.embeddings.len()
    }

    fn candidates(&self) -> usize {
        self.quality.first().map_or(0, Vec::len)
    }
}

/// Embeddings with their quality and cost rows, owned (a subset of [`Labelled`]).
type Owned = (Vec<Vec<f32>>, Vec<Vec<f64>>, Vec<Vec<f64>>);

/// Per prompt, per candidate: what a baseline expects.
#[derive(Debug, Clone, Default)]
pub struct Estimates {
    pub quality: Vec<Vec<f64>>,
    pub cost: Vec<Vec<f64>>,
}

impl Estimates {
    /// The candidate the gateway's policy picks per prompt at `tradeoff` from these estimates.
    pub fn choices(&self, tradeoff: Tradeoff) -> Vec<usize> {
        self.quality
            .iter()
            .zip(&self.cost)
            .map(|(q, c)| {
                let scored: Vec<Scored> = (0..q.len())
                    .map(|j| Scored { candidate: j, quality: q[j], cost_usd: c[j], latency_ms: 0.0, utility: tradeoff.utility(q[j], c[j], 0.0) })
                    .collect();
                policy::choose(&scored, None, &policy::Exploration::OFF, 0.0).map_or(0, |choice| choice.ranking[0])
            })
            .collect()
    }

    /// Choices at every λ of the report's sweep.
    pub fn sweep(&self) -> Vec<Vec<usize>> {
        cost_weights().into_iter().map(|l| self.choices(tradeoff_at(l))).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Mean of the labels of `members` (rows of `reference`), per candidate.
fn mean_labels(reference: &Labelled<'_>, members: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let m = reference.candidates();
    let (mut q, mut c) = (vec![0.0; m], vec![0.0; m]);
    for &r in members {
        for j in 0..m {
            q[j] += reference.quality[r][j];
            c[j] += reference.cost[r][j];
        }
    }
    let n = members.len().max(1) as f64;
    (q.into_iter().map(|v| v / n).collect(), c.into_iter().map(|v| v / n).collect())
}

/// kNN estimates for `queries` from the `k` most similar reference prompts.
pub fn knn(reference: &Labelled<'_>, queries: &[Vec<f32>], k: usize) -> Estimates {
    let k = k.clamp(1, reference.len().max(1));
    let mut out = Estimates::default();
    for query in queries {
        let mut sims: Vec<(f32, usize)> = reference.embeddings.iter().enumerate().map(|(i, e)| (dot(query, e), i)).collect();
        if k < sims.len() {
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            sims.truncate(k);
        }
        let members: Vec<usize> = sims.iter().map(|&(_, i)| i).collect();
        let (q, c) = mean_labels(reference, &members);
        out.quality.push(q);
        out.cost.push(c);
    }
    out
}

/// Spherical k-means (cosine) with k-means++ seeding; returns unit centroids.
pub fn kmeans(points: &[Vec<f32>], k: usize, seed: u64) -> Vec<Vec<f32>> {
    let k = k.clamp(1, points.len().max(1));
    let Some(first) = points.first() else { return Vec::new() };
    let dim = first.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut centroids: Vec<Vec<f32>> = vec![points[rng.random_range(0..points.len())].clone()];
    while centroids.len() < k {
        // Distance to the nearest centroid, 1 − cosine, squared: far points are likelier.
        let weights: Vec<f64> = points
            .iter()
            .map(|p| {
                let best = centroids.iter().map(|c| dot(p, c)).fold(f32::MIN, f32::max);
                f64::from((1.0 - best).max(0.0)).powi(2)
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            weights.iter().position(|w| {
                target -= w;
                target <= 0.0
            })
        } else {
            None
        };
        centroids.push(points[pick.unwrap_or_else(|| rng.random_range(0..points.len()))].clone());
    }
    for _ in 0..KMEANS_ITERATIONS {
        let assignment: Vec<usize> = points.iter().map(|p| nearest(&centroids, p)).collect();
        let mut sums = vec![vec![0.0f32; dim]; k];
        let mut counts = vec![0usize; k];
        for (p, &a) in points.iter().zip(&assignment) {
            counts[a] += 1;
            for (s, x) in sums[a].iter_mut().zip(p) {
                *s += x;
            }
        }
        for (centroid, (sum, count)) in centroids.iter_mut().zip(sums.into_iter().zip(counts)) {
            let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
            if count > 0 && norm > 0.0 {
                *centroid = sum.into_iter().map(|x| x / norm).collect();
            }
        }
    }
    centroids
}

fn nearest(centroids: &[Vec<f32>], p: &[f32]) -> usize {
    centroids
        .iter()
        .enumerate()
        .map(|(i, c)| (dot(p, c), i))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(0, |(_, i)| i)
}

/// Cluster estimates: each query gets its nearest centroid's per-candidate means (the whole
/// reference's means for a cluster no reference prompt fell in).
pub fn cluster(reference: &Labelled<'_>, queries: &[Vec<f32>], clusters: usize) -> Estimates {
    let centroids = kmeans(reference.embeddings, clusters, SEED);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); centroids.len()];
    for (i, e) in reference.embeddings.iter().enumerate() {
        members[nearest(&centroids, e)].push(i);
    }
    let everyone: Vec<usize> = (0..reference.len()).collect();
    let fallback = mean_labels(reference, &everyone);
    let means: Vec<(Vec<f64>, Vec<f64>)> = members
        .iter()
        .map(|m| if m.is_empty() { fallback.clone() } else { mean_labels(reference, m) })
        .collect();
    let mut out = Estimates::default();
    for query in queries {
        let (q, c) = &means[nearest(&centroids, query)];
        out.quality.push(q.clone());
        out.cost.push(c.clone());
    }
    out
}

/// AIQ of a curve given by its choices at each point (`curve[point][prompt]`), over the
/// prompts `rows` of the realised `quality`/`cost`, on those prompts' own cost range and
/// joined with their cheapest single model (as the report's AIQ).
pub fn curve_aiq(quality: &[Vec<f64>], cost: &[Vec<f64>], rows: &[usize], curve: &[Vec<usize>]) -> f64 {
    let m = quality.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let point = |choice: &dyn Fn(usize) -> usize| Point {
        quality: rows.iter().map(|&i| quality[i][choice(i)]).sum::<f64>() / n,
        cost: rows.iter().map(|&i| cost[i][choice(i)]).sum::<f64>() / n,
    };
    let singles: Vec<Point> = (0..m).map(|j| point(&|_| j)).collect();
    let (lo, hi) = singles.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.cost), hi.max(p.cost)));
    let Some(cheapest) = singles.iter().copied().min_by(|a, b| a.cost.total_cmp(&b.cost)) else { return 0.0 };
    let mut points: Vec<Point> = curve.iter().map(|choices| point(&|i| choices[i])).collect();
    points.push(cheapest);
    aiq(&points, lo, hi)
}

/// A hyper-parameter chosen on validation prompts, with the AIQ each value reached there.
#[derive(Debug, Clone, Serialize)]
pub struct Tuned {
    pub chosen: usize,
    pub validation_aiq: Vec<(usize, f64)>,
}

/// Tries every value of `grid` fitting on four fifths of `train` and scoring the last fifth
/// (every fifth prompt), and keeps the best.
pub fn tune(train: &Labelled<'_>, grid: &[usize], fit: impl Fn(&Labelled<'_>, &[Vec<f32>], usize) -> Estimates) -> Tuned {
    let (fit_rows, val_rows): (Vec<usize>, Vec<usize>) = (0..train.len()).partition(|i| i % 5 != 0);
    let pick = |rows: &[usize]| -> Owned {
        (
            rows.iter().map(|&i| train.embeddings[i].clone()).collect(),
            rows.iter().map(|&i| train.quality[i].clone()).collect(),
            rows.iter().map(|&i| train.cost[i].clone()).collect(),
        )
    };
    let (fe, fq, fc) = pick(&fit_rows);
    let (ve, vq, vc) = pick(&val_rows);
    let fitting = Labelled { embeddings: &fe, quality: &fq, cost: &fc };
    let all_val: Vec<usize> = (0..ve.len()).collect();
    let validation_aiq: Vec<(usize, f64)> =
        grid.iter().map(|&k| (k, curve_aiq(&vq, &vc, &all_val, &fit(&fitting, &ve, k).sweep()))).collect();
    let chosen = validation_aiq.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map_or(grid[0], |&(k, _)| k);
    Tuned { chosen, validation_aiq }
}

/// The 2.5th and 97.5th percentiles of bootstrap draws: a 95% interval.
pub fn interval95(draws: &[f64]) -> (f64, f64) {
    let mut v = draws.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.025), at(0.975))
}

/// A curve's AIQ with its bootstrap 95% interval, and the paired difference from the router.
#[derive(Debug, Clone, Serialize)]
pub struct CurveInterval {
    pub name: String,
    pub aiq: f64,
    pub lo95: f64,
    pub hi95: f64,
    /// Router − this curve, over the same resamples.
    pub router_minus: f64,
    pub router_minus_lo95: f64,
    pub router_minus_hi95: f64,
}

/// Bootstrap intervals for every named curve; the first one must be the router.
pub fn bootstrap(quality: &[Vec<f64>], cost: &[Vec<f64>], curves: &[(String, Vec<Vec<usize>>)], resamples: usize) -> Vec<CurveInterval> {
    let n = quality.len();
    let all: Vec<usize> = (0..n).collect();
    let full: Vec<f64> = curves.iter().map(|(_, c)| curve_aiq(quality, cost, &all, c)).collect();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); curves.len()];
    for _ in 0..resamples {
        let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n.max(1))).collect();
        for (d, (_, curve)) in draws.iter_mut().zip(curves) {
            d.push(curve_aiq(quality, cost, &rows, curve));
        }
    }
    let interval = |v: Vec<f64>| interval95(&v);
    curves
        .iter()
        .enumerate()
        .map(|(c, (name, _))| {
            let (lo95, hi95) = interval(draws[c].clone());
            let diff: Vec<f64> = draws[0].iter().zip(&draws[c]).map(|(r, x)| r - x).collect();
            let (dlo, dhi) = interval(diff);
            CurveInterval {
                name: name.clone(),
                aiq: full[c],
                lo95,
                hi95,
                router_minus: full[0] - full[c],
                router_minus_lo95: dlo,
                router_minus_hi95: dhi,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// Two kinds of prompt (two directions); model 0 is right on the first kind only, model 1
    /// on the second, both cost the same.
    fn two_kinds(n: usize) -> Owned {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut e, mut q, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let kind = i % 2;
            let jitter = rng.random::<f32>() * 0.1;
            e.push(unit(&if kind == 0 { [1.0, jitter, 0.0] } else { [jitter, 1.0, 0.0] }));
            q.push(if kind == 0 { vec![1.0, 0.0] } else { vec![0.0, 1.0] });
            c.push(vec![0.001, 0.001]);
        }
        (e, q, c)
    }

    #[test]
    fn knn_and_clusters_route_each_kind_to_its_model() {
        let (e, q, c) = two_kinds(200);
        let train = Labelled { embeddings: &e[..100], quality: &q[..100], cost: &c[..100] };
        let queries = &e[100..];
        for estimates in [knn(&train, queries, 5), cluster(&train, queries, 2)] {
            let choices = estimates.choices(Tradeoff::BALANCED);
            for (i, &choice) in choices.iter().enumerate() {
                assert_eq!(choice, (100 + i) % 2, "prompt {i}");
            }
        }
    }

    #[test]
    fn tuning_prefers_a_k_that_sees_the_structure() {
        let (e, q, c) = two_kinds(300);
        let train = Labelled { embeddings: &e, quality: &q, cost: &c };
        // A k above the 240 fitting prompts averages all of them: one model for every prompt.
        let tuned = tune(&train, &[3, 1000], knn);
        assert_eq!(tuned.chosen, 3, "{:?}", tuned.validation_aiq);
    }

    #[test]
    fn bootstrap_intervals_bracket_the_estimate_and_separate_a_real_gap() {
        let (_, q, c) = two_kinds(400);
        let n = q.len();
        let perfect: Vec<Vec<usize>> = vec![(0..n).map(|i| i % 2).collect()];
        let one_model: Vec<Vec<usize>> = vec![vec![0; n]];
        let rows = bootstrap(&q, &c, &[("router".into(), perfect), ("single".into(), one_model)], 200);
        assert!((rows[0].aiq - 1.0).abs() < 1e-9);
        assert!((rows[1].aiq - 0.5).abs() < 1e-9);
        for r in &rows {
            assert!(r.lo95 <= r.aiq && r.aiq <= r.hi95, "{r:?}");
        }
        assert!(rows[1].router_minus_lo95 > 0.4, "{:?}", rows[1]);
        assert_eq!(rows[0].router_minus, 0.0);
    }
}
