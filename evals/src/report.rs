//! `switchyard eval routing`: the numbers of one dataset's test split (router, baselines,
//! oracle), and their Markdown rendering.

use serde::Serialize;

use crate::baselines::{self, CurveInterval, Labelled, Tuned};
use crate::metrics::{self, aiq, calibration, Calibration, PairReport, Point};
use crate::offline::{cost_weights, tradeoff_at, EvalSet};

/// Strong/weak pair reported by default (RouteLLM's pair, both in RouterBench and Arena-Hard).
pub use training::eval::{STRONG, WEAK};

/// One point of a trade-off sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// λ of utility = quality − λ·cost (cost in USD per 1,000 requests).
    pub cost_weight: f64,
    pub cost: f64,
    pub quality: f64,
    /// Share of prompts served by each candidate (only those above 0).
    pub shares: Vec<(String, f64)>,
}

impl SweepPoint {
    pub fn point(&self) -> Point {
        Point {
            cost: self.cost,
            quality: self.quality,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelPoint {
    pub model: String,
    pub cost: f64,
    pub quality: f64,
}

impl ModelPoint {
    pub fn point(&self) -> Point {
        Point {
            cost: self.cost,
            quality: self.quality,
        }
    }
}

/// AIQ of each curve over one common cost range (cheapest to dearest single model). Every
/// curve is joined with the cheapest single model first: any router can send a share of its
/// traffic there at random, so the hull reaches the range's low end by a policy one could
/// actually run (instead of crediting a curve with its cheapest point's quality below it).
#[derive(Debug, Clone, Serialize)]
pub struct AiqSummary {
    pub cost_lo: f64,
    pub cost_hi: f64,
    pub router: f64,
    pub oracle: f64,
    /// The best single model mixed at random with the cheapest one.
    pub best_single: f64,
    /// The hull of all single models: the best a random mix of two models reaches.
    pub random_mix: f64,
    pub length_baseline: Option<f64>,
}

/// The strong/weak pair: APGR/CPT of router, length baseline and random, and the PGR curves.
#[derive(Debug, Clone, Serialize)]
pub struct PairSummary {
    pub report: PairReport,
    pub oracle_apgr: f64,
    /// Strong-call shares of the PGR curves.
    pub shares: Vec<f64>,
    pub pgr_router: Vec<f64>,
    pub pgr_length: Vec<f64>,
    pub pgr_oracle: Vec<f64>,
    /// Random routing's expected PGR at each share.
    pub pgr_random: Vec<f64>,
    /// The length baseline on the quality–cost plane (same shares).
    pub length_points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub prompts: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub how: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    pub dataset: String,
    pub split: String,
    pub prompts: usize,
    pub dropped: usize,
    pub cost_source: String,
    pub candidates: Vec<String>,
    pub singles: Vec<ModelPoint>,
    /// Highest test-split quality among single models (chosen on test: flatters the baseline).
    pub best_single: ModelPoint,
    pub cheapest_single: ModelPoint,
    pub router: Vec<SweepPoint>,
    pub oracle: Vec<SweepPoint>,
    pub aiq: AiqSummary,
    pub pair: Option<PairSummary>,
    pub calibration: Calibration,
    /// Per candidate: its expected calibration error over the prompts, and its mean predicted
    /// and observed quality (a head that is right on average can still rank prompts badly).
    pub calibration_by_model: Vec<ModelCalibration>,
    pub latency: Option<LatencySummary>,
    /// kNN and cluster baselines fitted on the training split, with bootstrap intervals.
    pub baselines: Option<BaselineSummary>,
}

/// One candidate's calibration on the evaluated prompts.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCalibration {
    pub model: String,
    pub ece: f64,
    pub mean_predicted: f64,
    pub mean_observed: f64,
}

/// The selector beside the simple routers, each with a bootstrap 95% interval.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineSummary {
    /// Training prompts the kNN and cluster baselines were fitted on.
    pub fitted_on: usize,
    pub knn: Tuned,
    pub clusters: Tuned,
    pub resamples: usize,
    /// Router first, then each baseline.
    pub intervals: Vec<CurveInterval>,
    /// APGR on the strong/weak pair with the baseline's quality gap as the score.
    pub knn_apgr: Option<f64>,
    pub cluster_apgr: Option<f64>,
}

/// Fits kNN and clusters on `train` (k and cluster count tuned on its validation fifth) and
/// compares every curve with the router on the test prompts of `set`.
fn baseline_summary(set: &EvalSet, train: &EvalSet, router: &[Vec<usize>], length: Option<&[Vec<usize>]>, best_single: usize, pair: Option<(usize, usize)>) -> Option<BaselineSummary> {
    if train.candidates != set.candidates {
        return None;
    }
    let reference = Labelled { embeddings: &train.embeddings, quality: &train.quality, cost: &train.cost };
    let knn = baselines::tune(&reference, baselines::KNN_KS, baselines::knn);
    let clusters = baselines::tune(&reference, baselines::CLUSTER_KS, baselines::cluster);
    let knn_estimates = baselines::knn(&reference, &set.embeddings, knn.chosen);
    let cluster_estimates = baselines::cluster(&reference, &set.embeddings, clusters.chosen);
    let n = set.len();
    let mut curves: Vec<(String, Vec<Vec<usize>>)> = vec![
        ("router".into(), router.to_vec()),
        (format!("kNN (k = {})", knn.chosen), knn_estimates.sweep()),
        (format!("clusters (k-means, {} clusters)", clusters.chosen), cluster_estimates.sweep()),
    ];
    if let Some(length) = length {
        curves.push((format!("prompt length ({STRONG} / {WEAK})"), length.to_vec()));
    }
    curves.push(("random mix of two models".into(), (0..set.candidates.len()).map(|j| vec![j; n]).collect()));
    curves.push((format!("best single model ({})", set.candidates[best_single]), vec![vec![best_single; n]]));
    let intervals = baselines::bootstrap(&set.quality, &set.cost, &curves, baselines::RESAMPLES);
    let apgr = |e: &baselines::Estimates| {
        pair.map(|(s, w)| {
            let gap: Vec<f64> = e.quality.iter().map(|q| q[s] - q[w]).collect();
            let (qs, qw) = set.pair_columns(s, w);
            metrics::routing_curve(&gap, &qs, &qw).apgr
        })
    };
    Some(BaselineSummary {
        fitted_on: train.len(),
        knn_apgr: apgr(&knn_estimates),
        cluster_apgr: apgr(&cluster_estimates),
        knn,
        clusters,
        resamples: baselines::RESAMPLES,
        intervals,
    })
}

/// The sweep's points from the choices made at each λ of [`cost_weights`].
fn sweep(set: &EvalSet, choices_at: &[Vec<usize>]) -> Vec<SweepPoint> {
    cost_weights()
        .into_iter()
        .zip(choices_at)
        .map(|(lambda, choices)| {
            let p = set.point(choices);
            let mut counts = vec![0usize; set.candidates.len()];
            for &c in choices {
                counts[c] += 1;
            }
            let shares = set
                .candidates
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(m, n)| (m.clone(), n as f64 / choices.len().max(1) as f64))
                .collect();
            SweepPoint {
                cost_weight: lambda,
                cost: p.cost,
                quality: p.quality,
                shares,
            }
        })
        .collect()
}

fn pair_summary(set: &EvalSet, strong_id: &str, weak_id: &str) -> Option<PairSummary> {
    let (strong, weak) = (set.index_of(strong_id)?, set.index_of(weak_id)?);
    let (sh, sw) = (set.route[strong].head, set.route[weak].head);
    let gap: Vec<f64> = set
        .predictions
        .iter()
        .map(|p| f64::from(p[sh].quality) - f64::from(p[sw].quality))
        .collect();
    let rows: Vec<&training::Row> = set.rows.iter().collect();
    let report = metrics::pair_report(&set.dataset, &rows, &gap, "quality-gap", strong_id, weak_id)?;
    let (qs, qw) = set.pair_columns(strong, weak);
    let true_gap: Vec<f64> = qs.iter().zip(&qw).map(|(s, w)| s - w).collect();
    let shares: Vec<f64> = (0..=20).map(|i| f64::from(i) / 20.0).collect();
    let (router_order, length_order, oracle_order) =
        (metrics::ranking(&gap), metrics::ranking(&set.lengths()), metrics::ranking(&true_gap));
    let curve = |order: &[usize]| -> Vec<f64> { shares.iter().map(|&s| metrics::pgr(order, &qs, &qw, s)).collect() };
    let n = set.len();
    let length_points = shares
        .iter()
        .map(|&s| set.split_point(&length_order, ((s * n as f64).ceil() as usize).min(n), strong, weak))
        .collect();
    Some(PairSummary {
        oracle_apgr: metrics::routing_curve(&true_gap, &qs, &qw).apgr,
        pgr_router: curve(&router_order),
        pgr_length: curve(&length_order),
        pgr_oracle: curve(&oracle_order),
        pgr_random: shares.iter().map(|&s| ((s * n as f64).ceil()).min(n as f64) / n.max(1) as f64).collect(),
        shares,
        length_points,
        report,
    })
}

/// Everything but latency (measured separately, it needs the embedder). With `train` (the
/// dataset's training prompts), the kNN and cluster baselines are fitted on it.
pub fn evaluate(set: &EvalSet, strong: &str, weak: &str, split: &str, train: Option<&EvalSet>) -> DatasetReport {
    let singles: Vec<ModelPoint> = (0..set.candidates.len())
        .map(|j| {
            let p = set.single(j);
            ModelPoint {
                model: set.candidates[j].clone(),
                cost: p.cost,
                quality: p.quality,
            }
        })
        .collect();
    let pick = |better: &dyn Fn(&ModelPoint, &ModelPoint) -> std::cmp::Ordering| {
        singles.iter().max_by(|a, b| better(a, b)).cloned().unwrap_or(ModelPoint {
            model: String::new(),
            cost: 0.0,
            quality: 0.0,
        })
    };
    let best_single = pick(&|a, b| a.quality.total_cmp(&b.quality).then(b.cost.total_cmp(&a.cost)));
    let cheapest_single = pick(&|a, b| b.cost.total_cmp(&a.cost));
    let router_choices: Vec<Vec<usize>> = cost_weights().into_iter().map(|l| set.choices(tradeoff_at(l))).collect();
    let oracle_choices: Vec<Vec<usize>> = cost_weights().into_iter().map(|l| set.oracle_choices(tradeoff_at(l))).collect();
    let router = sweep(set, &router_choices);
    let oracle = sweep(set, &oracle_choices);
    let pair = pair_summary(set, strong, weak);

    let single_points: Vec<Point> = singles.iter().map(ModelPoint::point).collect();
    let (lo, hi) = single_points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.cost), hi.max(p.cost)));
    let joined = |points: Vec<Point>| {
        let mut points = points;
        points.push(cheapest_single.point());
        aiq(&points, lo, hi)
    };
    let curve = |s: &[SweepPoint]| s.iter().map(SweepPoint::point).collect::<Vec<_>>();
    let aiq = AiqSummary {
        cost_lo: lo,
        cost_hi: hi,
        router: joined(curve(&router)),
        oracle: joined(curve(&oracle)),
        best_single: joined(vec![best_single.point()]),
        random_mix: joined(single_points.clone()),
        length_baseline: pair.as_ref().map(|p| joined(p.length_points.clone())),
    };

    let (mut predicted, mut observed) = (Vec::new(), Vec::new());
    for (i, p) in set.predictions.iter().enumerate() {
        for (j, c) in set.route.iter().enumerate() {
            predicted.push(f64::from(p[c.head].quality));
            observed.push(set.quality[i][j]);
        }
    }
    let pair_indices = set.index_of(strong).zip(set.index_of(weak));
    let length_choices: Option<Vec<Vec<usize>>> = pair_indices.map(|(s, w)| {
        let order = metrics::ranking(&set.lengths());
        (0..=20)
            .map(|i| set.split_choices(&order, ((f64::from(i) / 20.0 * set.len() as f64).ceil() as usize).min(set.len()), s, w))
            .collect()
    });
    let best_index = set.index_of(&best_single.model).unwrap_or(0);
    let baselines = train.and_then(|t| baseline_summary(set, t, &router_choices, length_choices.as_deref(), best_index, pair_indices));
    DatasetReport {
        baselines,
        dataset: set.dataset.clone(),
        split: split.to_owned(),
        prompts: set.len(),
        dropped: set.dropped,
        cost_source: set.cost_source.to_owned(),
        candidates: set.candidates.clone(),
        singles,
        best_single,
        cheapest_single,
        router,
        oracle,
        aiq,
        pair,
        calibration: calibration(&predicted, &observed, 10),
        calibration_by_model: set
            .route
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let p: Vec<f64> = set.predictions.iter().map(|p| f64::from(p[c.head].quality)).collect();
                let o: Vec<f64> = set.quality.iter().map(|q| q[j]).collect();
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
                ModelCalibration { model: set.candidates[j].clone(), ece: calibration(&p, &o, 10).ece, mean_predicted: mean(&p), mean_observed: mean(&o) }
            })
            .collect(),
        latency: None,
    }
}

/// The whole `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub checkpoint: String,
    pub checkpoint_created_at: String,
    pub command: String,
    pub datasets: Vec<DatasetReport>,
}

fn tuned_text(t: &Tuned) -> String {
    let tried: Vec<String> = t.validation_aiq.iter().map(|(k, a)| format!("{k}: {a:.4}")).collect();
    format!("{} (validation AIQ {})", t.chosen, tried.join(", "))
}

fn usd_1k(cost: f64) -> String {
    format!("{:.3}", cost * 1_000.0)
}

/// One paragraph saying, from the numbers, where the router stands against the baselines.
fn verdict(d: &DatasetReport) -> String {
    let a = &d.aiq;
    let versus = |x: f64, y: f64| if x > y { format!("above by {:.4}", x - y) } else { format!("below by {:.4}", y - x) };
    let mut s = format!(
        "**Reading:** the router's AIQ is {} the best random mix of two models, {} the best single model mixed with the cheapest, \
         and {:.4} under the oracle.",
        versus(a.router, a.random_mix),
        versus(a.router, a.best_single),
        a.oracle - a.router
    );
    if let Some(p) = &d.pair {
        let r = &p.report;
        s.push_str(&format!(
            " On {} vs {} its APGR is {:.3} against {:.3} for prompt length and {:.3} for random.",
            r.strong, r.weak, r.router.apgr, r.length_baseline.apgr, r.random.apgr
        ));
    }
    if d.prompts < 200 {
        s.push_str(&format!(" With {} test prompts, differences of a few hundredths are within noise.", d.prompts));
    }
    s.push_str(" Random mixes of any other pair lie under the grey hull; every single model's point is in `summary.json`.\n\n");
    s
}

/// The Markdown report; `figures(dataset)` names the SVG files beside it.
pub fn markdown(summary: &Summary) -> String {
    let mut s = String::new();
    s.push_str("# Routing evaluation\n\n");
    s.push_str(&format!(
        "Checkpoint `{}` (created {}). Produced by\n\n```sh\n{}\n```\n\n",
        summary.checkpoint, summary.checkpoint_created_at, summary.command
    ));
    s.push_str(
        "Every curve is measured on the test split: the router is the selector's predictions fed to the gateway's own policy \
         (`router_model::policy::{score, choose}`, exploration 0) at utility = quality − λ·cost for a sweep of λ \
         (cost in USD per 1,000 requests, latency weight 0); realised quality and cost are the dataset's labels for the model chosen. \
         The oracle is the same policy fed the realised labels and costs. AIQ is the mean of the non-decreasing convex hull of a curve \
         over the cost range from the cheapest to the dearest single model (RouterBench, arXiv 2403.12031); every curve is first \
         joined with the cheapest single model (any router can send a share of traffic there at random), so a curve that starts \
         higher up is not credited with quality it cannot reach at the low end. \
         PGR/APGR/CPT follow RouteLLM (arXiv 2406.18665): APGR is the mean PGR at 10 evenly spaced strong-call shares 0, 1/9, …, 1, \
         so random routing scores 0.5 and PGR is 0 at share 0; the oracle's APGR can still pass 1, because at middle shares it \
         has sent every prompt the strong model wins to it and kept every prompt the weak model wins (PGR above 1 there).\n\n",
    );
    for d in &summary.datasets {
        s.push_str(&format!("## {} ({} split)\n\n", d.dataset, d.split));
        s.push_str(&format!(
            "{} prompts ({} left out: a candidate had no label or cost). {} candidates. Cost: {}.\n\n",
            d.prompts,
            d.dropped,
            d.candidates.len(),
            d.cost_source
        ));
        s.push_str(&verdict(d));
        s.push_str(&format!("![quality vs cost]({}-quality-cost.svg)\n\n", d.dataset));
        s.push_str(&format!(
            "| curve | AIQ (USD {}–{} per 1k requests) |\n|---|---|\n",
            usd_1k(d.aiq.cost_lo),
            usd_1k(d.aiq.cost_hi)
        ));
        s.push_str(&format!("| router | {:.4} |\n", d.aiq.router));
        s.push_str(&format!("| oracle | {:.4} |\n", d.aiq.oracle));
        s.push_str(&format!(
            "| best single model ({}, mixed at random with {}) | {:.4} |\n",
            d.best_single.model, d.cheapest_single.model, d.aiq.best_single
        ));
        s.push_str(&format!("| random mix of two models (hull of all single models) | {:.4} |\n", d.aiq.random_mix));
        if let Some(l) = d.aiq.length_baseline {
            s.push_str(&format!("| prompt length ({STRONG} / {WEAK}) | {l:.4} |\n"));
        }
        if let Some(b) = &d.baselines {
            s.push_str(&format!(
                "\nBeside the simple routers (kNN and clusters over the same MiniLM embeddings, fitted on the {} training prompts; \
                 k chosen on a validation fifth of them: kNN {}, clusters {}). 95% intervals from {} bootstrap resamples of the test \
                 prompts; the last column is the paired difference router − curve over the same resamples.\n\n\
                 | curve | AIQ | 95% interval | router − curve [95%] |\n|---|---|---|---|\n",
                b.fitted_on,
                tuned_text(&b.knn),
                tuned_text(&b.clusters),
                b.resamples
            ));
            for c in &b.intervals {
                s.push_str(&format!(
                    "| {} | {:.4} | {:.4}–{:.4} | {:+.4} [{:+.4}, {:+.4}] |\n",
                    c.name, c.aiq, c.lo95, c.hi95, c.router_minus, c.router_minus_lo95, c.router_minus_hi95
                ));
            }
        }
        s.push_str("\n| model | quality | USD per 1k requests |\n|---|---|---|\n");
        let mut singles = d.singles.clone();
        singles.sort_by(|a, b| b.quality.total_cmp(&a.quality));
        for m in &singles {
            s.push_str(&format!("| {} | {:.3} | {} |\n", m.model, m.quality, usd_1k(m.cost)));
        }
        s.push_str("\nRouter sweep (selected points):\n\n| λ | quality | USD per 1k | served (share) |\n|---|---|---|---|\n");
        let step = (d.router.len() / 12).max(1);
        for p in d.router.iter().step_by(step) {
            let mut shares = p.shares.clone();
            shares.sort_by(|a, b| b.1.total_cmp(&a.1));
            let served: Vec<String> = shares.iter().take(3).map(|(m, v)| format!("{m} {:.0}%", v * 100.0)).collect();
            s.push_str(&format!("| {:.3} | {:.3} | {} | {} |\n", p.cost_weight, p.quality, usd_1k(p.cost), served.join(", ")));
        }
        if let Some(p) = &d.pair {
            let r = &p.report;
            s.push_str(&format!(
                "\n### {} vs {}\n\nStrong quality {:.3}, weak {:.3} on {} prompts.\n\n![PGR]({}-pgr.svg)\n\n",
                r.strong, r.weak, r.strong_quality, r.weak_quality, r.prompts, d.dataset
            ));
            s.push_str("| router | APGR | CPT(50%) | CPT(80%) |\n|---|---|---|---|\n");
            for (name, c) in [
                ("selector (P(strong) − P(weak))", &r.router),
                ("prompt length (longer → strong)", &r.length_baseline),
                ("random (200 seeded draws)", &r.random),
            ] {
                s.push_str(&format!("| {name} | {:.3} | {:.2} | {:.2} |\n", c.apgr, c.cpt50, c.cpt80));
            }
            if let Some(b) = &d.baselines {
                for (name, apgr) in [("kNN (quality gap of the neighbours)", b.knn_apgr), ("clusters (quality gap of the cluster)", b.cluster_apgr)] {
                    if let Some(apgr) = apgr {
                        s.push_str(&format!("| {name} | {apgr:.3} | | |\n"));
                    }
                }
            }
            s.push_str(&format!("| oracle (realised gap) | {:.3} | | |\n", p.oracle_apgr));
        }
        s.push_str(&format!(
            "\n### Calibration\n\n![calibration]({}-calibration.svg)\n\nExpected calibration error {:.3} over {} (prompt, candidate) pairs.\n\n| predicted | n | mean predicted | mean observed |\n|---|---|---|---|\n",
            d.dataset, d.calibration.ece, d.calibration.pairs
        ));
        for b in &d.calibration.bins {
            s.push_str(&format!("| {:.1}–{:.1} | {} | {:.3} | {:.3} |\n", b.lo, b.hi, b.count, b.mean_predicted, b.mean_observed));
        }
        if !d.calibration_by_model.is_empty() {
            s.push_str("\nPer model (10 equal-width bins each):\n\n| model | ECE | mean predicted | mean observed |\n|---|---|---|---|\n");
            for m in &d.calibration_by_model {
                s.push_str(&format!("| {} | {:.3} | {:.3} | {:.3} |\n", m.model, m.ece, m.mean_predicted, m.mean_observed));
            }
        }
        if let Some(l) = &d.latency {
            s.push_str(&format!(
                "\n### Decision latency\n\n{} prompts, {}: p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms.\n",
                l.prompts, l.how, l.p50_ms, l.p99_ms, l.mean_ms
            ));
        }
        s.push('\n');
    }
    s
}
