//! Metrics: per-candidate quality AUC and Brier score, output-length error, the difficulty
//! head's rank correlation, and the strong/weak routing curve (PGR, APGR, CPT) beside a
//! prompt-length baseline and random routing.
//!
//! APGR follows RouteLLM (arXiv 2406.18665): at a strong-call share s, the router sends the
//! ⌈s·N⌉ prompts it scores highest to the strong model; PGR(s) = (q_router − q_weak) /
//! (q_strong − q_weak); APGR = the mean PGR over 10 evenly spaced shares 0, 1/9, …, 1 (so a
//! random router scores 0.5 in expectation). CPT(x) = the smallest of 100 shares (0.01 steps)
//! whose PGR reaches x.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use router_model::selector::input_row;
use router_model::{FeatureNorm, RequestFeatures, Selector};
use serde::Serialize;

use crate::data::Row;
use crate::error::Result;

/// What the selector says about a set of prompts, on natural scales.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// `[N][C]` P(good answer).
    pub quality: Vec<Vec<f32>>,
    /// `[N][C]` ln(output tokens).
    pub log_tokens: Vec<Vec<f32>>,
    /// `[N][C]` ln(latency ms).
    pub log_latency: Vec<Vec<f32>>,
    /// `[N]` predicted mean quality.
    pub difficulty: Vec<f32>,
}

/// Runs `selector` over (embedding, features) pairs in batches.
pub fn predict(selector: &Selector, norm: &FeatureNorm, inputs: &[(&[f32], RequestFeatures)]) -> Result<Predictions> {
    let mut out = Predictions::default();
    for chunk in inputs.chunks(1024) {
        let width = selector.architecture().input_dim();
        let mut rows = Vec::with_capacity(chunk.len() * width);
        for (embedding, features) in chunk {
            rows.extend(input_row(embedding, features, norm));
        }
        let x = Tensor::from_vec(rows, (chunk.len(), width), &Device::Cpu)?;
        let y = selector.forward(&x)?;
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        out.quality.extend(
            y.quality_logits
                .to_vec2::<f32>()?
                .into_iter()
                .map(|r| r.into_iter().map(sig).collect::<Vec<_>>()),
        );
        out.log_tokens.extend(y.log_output_tokens.to_vec2::<f32>()?);
        out.log_latency.extend(y.log_latency_ms.to_vec2::<f32>()?);
        out.difficulty.extend(y.difficulty_logit.to_vec1::<f32>()?.into_iter().map(sig));
    }
    Ok(out)
}

/// Area under the ROC curve of `scores` for binary `labels` (ties count half); `None` when
/// one class is absent.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * pairs[i..=j].iter().filter(|p| p.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut r = vec![0.0; values.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && values[idx[j + 1]] == values[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation; `None` for fewer than 3 points or a constant side.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 3 || a.len() != b.len() {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// The strong/weak routing curve of one scoring rule.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingCurve {
    pub apgr: f64,
    /// Smallest strong-call share reaching PGR ≥ 50% / 80%.
    pub cpt50: f64,
    pub cpt80: f64,
}

/// Mean quality when the `k` highest-scored prompts go to the strong model.
fn routed_quality(order: &[usize], strong: &[f64], weak: &[f64], k: usize) -> f64 {
    let n = order.len() as f64;
    let mut total: f64 = weak.iter().sum();
    for &i in &order[..k] {
        total += strong[i] - weak[i];
    }
    total / n
}

/// PGR at `share` for a ranking (`order`: prompt indices, highest score first; see
/// [`ranking`]).
pub fn pgr(order: &[usize], strong: &[f64], weak: &[f64], share: f64) -> f64 {
    let n = order.len();
    let k = ((share * n as f64).ceil() as usize).min(n);
    let (qs, qw) = (mean(strong), mean(weak));
    if (qs - qw).abs() < 1e-12 {
        return 0.0;
    }
    (routed_quality(order, strong, weak, k) - qw) / (qs - qw)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Routing curve for `scores` (higher = send to the strong model). Ties are broken by prompt
/// order, which is fixed.
pub fn routing_curve(scores: &[f64], strong: &[f64], weak: &[f64]) -> RoutingCurve {
    curve_for_order(&ranking(scores), strong, weak)
}

/// Prompt indices, highest score first (ties by prompt order).
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

fn curve_for_order(order: &[usize], strong: &[f64], weak: &[f64]) -> RoutingCurve {
    let apgr = (0..10).map(|i| pgr(order, strong, weak, i as f64 / 9.0)).sum::<f64>() / 10.0;
    let cpt = |target: f64| {
        (0..=100)
            .map(|i| i as f64 / 100.0)
            .find(|&s| pgr(order, strong, weak, s) >= target - 1e-12)
            .unwrap_or(1.0)
    };
    RoutingCurve {
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
    }
}

/// Random routing, averaged over `trials` seeded shuffles.
pub fn random_curve(strong: &[f64], weak: &[f64], trials: usize, seed: u64) -> RoutingCurve {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..strong.len()).collect();
    let (mut apgr, mut cpt50, mut cpt80) = (0.0, 0.0, 0.0);
    for _ in 0..trials {
        order.shuffle(&mut rng);
        let c = curve_for_order(&order, strong, weak);
        apgr += c.apgr;
        cpt50 += c.cpt50;
        cpt80 += c.cpt80;
    }
    let t = trials.max(1) as f64;
    RoutingCurve {
        apgr: apgr / t,
        cpt50: cpt50 / t,
        cpt80: cpt80 / t,
    }
}

/// Strong/weak comparison on one dataset's test rows.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub dataset: String,
    pub strong: String,
    pub weak: String,
    pub prompts: usize,
    pub strong_quality: f64,
    pub weak_quality: f64,
    /// What the router ranked by: `quality-gap` (P(strong) − P(weak)) or `difficulty`
    /// (1 − predicted mean quality, when a model has no trained head).
    pub router_signal: String,
    pub router: RoutingCurve,
    pub length_baseline: RoutingCurve,
    pub random: RoutingCurve,
}

/// Routing `rows` between `strong` and `weak`; `router_scores[i]` is the router's "needs the
/// strong model" score of `rows[i]`.
pub fn pair_report(dataset: &str, rows: &[&Row], router_scores: &[f64], signal: &str, strong: &str, weak: &str) -> Option<PairReport> {
    let mut s = Vec::new();
    let mut w = Vec::new();
    let mut router = Vec::new();
    let mut length = Vec::new();
    for (row, score) in rows.iter().zip(router_scores) {
        if let (Some(qs), Some(qw)) = (row.quality(strong), row.quality(weak)) {
            s.push(f64::from(qs));
            w.push(f64::from(qw));
            router.push(*score);
            length.push(row.prompt.chars().count() as f64);
        }
    }
    if s.len() < 10 {
        return None;
    }
    Some(PairReport {
        dataset: dataset.to_owned(),
        strong: strong.to_owned(),
        weak: weak.to_owned(),
        prompts: s.len(),
        strong_quality: mean(&s),
        weak_quality: mean(&w),
        router_signal: signal.to_owned(),
        router: routing_curve(&router, &s, &w),
        length_baseline: routing_curve(&length, &s, &w),
        random: random_curve(&s, &w, 200, 7),
    })
}

/// Quality metrics of one candidate's head.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateMetrics {
    pub prompts: usize,
    /// AUC of P(good) for "quality ≥ 0.5".
    pub auc: Option<f64>,
    pub brier: f64,
    pub mean_quality: f64,
    pub mean_predicted: f64,
    /// Mean |ln predicted − ln actual| output tokens, where the data has lengths.
    pub tokens_mae_log: Option<f64>,
    pub latency_mae_log: Option<f64>,
}

/// Multi-model choice on one dataset: the selector's argmax against fixed choices.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceReport {
    pub prompts: usize,
    /// Mean realised quality of the model with the highest predicted quality (among the
    /// models the dataset scored on that prompt).
    pub router_quality: f64,
    pub router_cost_usd: Option<f64>,
    /// Best single model by training-split mean quality, and its test quality.
    pub best_single: String,
    pub best_single_quality: f64,
    pub best_single_cost_usd: Option<f64>,
    /// Per-prompt best model (upper bound).
    pub oracle_quality: f64,
    /// A uniformly random model per prompt (expected value).
    pub random_quality: f64,
}

/// Per-dataset summary.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetMetrics {
    pub prompts: usize,
    /// Pooled over candidates with data.
    pub quality_auc: Option<f64>,
    pub brier: Option<f64>,
    /// Spearman of predicted difficulty (mean quality) against the actual mean quality.
    pub difficulty_spearman: Option<f64>,
    /// The same for "longer prompt = harder" (−length), the baseline.
    pub length_spearman: Option<f64>,
    pub choice: Option<ChoiceReport>,
}

/// Everything measured on one evaluation set.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub candidates: BTreeMap<String, CandidateMetrics>,
    pub datasets: BTreeMap<String, DatasetMetrics>,
    pub pairs: Vec<PairReport>,
}

/// The strong/weak pair reported for RouterBench (and Arena-Hard, which has both).
pub const STRONG: &str = "gpt-4-1106-preview";
pub const WEAK: &str = "mixtral-8x7b-instruct-v0.1";

/// Evaluates predictions `pred` (aligned with `rows`) for `candidates`. `best_single` names,
/// per dataset, the model with the best training-split mean quality.
pub fn evaluate(candidates: &[String], rows: &[&Row], pred: &Predictions, best_single: &BTreeMap<String, String>) -> EvalReport {
    let mut per_candidate = BTreeMap::new();
    for (j, model) in candidates.iter().enumerate() {
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        let mut brier = 0f64;
        let mut q_sum = 0f64;
        let mut tokens_err = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let Some(outcome) = row.outcomes.get(model) else { continue };
            if let Some(q) = outcome.quality {
                let p = pred.quality[i][j];
                scores.push(p);
                labels.push(q >= 0.5);
                brier += f64::from((p - q).powi(2));
                q_sum += f64::from(q);
            }
            if let Some(t) = outcome.output_tokens {
                tokens_err.push(f64::from((pred.log_tokens[i][j] - t.ln()).abs()));
            }
        }
        if scores.is_empty() {
            continue;
        }
        let n = scores.len() as f64;
        per_candidate.insert(
            model.clone(),
            CandidateMetrics {
                prompts: scores.len(),
                auc: auc(&scores, &labels),
                brier: brier / n,
                mean_quality: q_sum / n,
                mean_predicted: scores.iter().map(|&p| f64::from(p)).sum::<f64>() / n,
                tokens_mae_log: (!tokens_err.is_empty()).then(|| mean(&tokens_err)),
                latency_mae_log: None,
            },
        );
    }

    let mut datasets = BTreeMap::new();
    let mut names: Vec<String> = rows.iter().map(|r| r.kind.name().to_owned()).collect();
    names.sort();
    names.dedup();
    let mut pairs = Vec::new();
    for name in &names {
        let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].kind.name() == name).collect();
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        let mut brier = 0f64;
        let (mut diff_pred, mut diff_true, mut neg_len) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &idx {
            for (j, model) in candidates.iter().enumerate() {
                if let Some(q) = rows[i].quality(model) {
                    scores.push(pred.quality[i][j]);
                    labels.push(q >= 0.5);
                    brier += f64::from((pred.quality[i][j] - q).powi(2));
                }
            }
            if let Some(m) = rows[i].mean_quality() {
                diff_pred.push(f64::from(pred.difficulty[i]));
                diff_true.push(f64::from(m));
                neg_len.push(-(rows[i].prompt.chars().count() as f64));
            }
        }
        let subset: Vec<&Row> = idx.iter().map(|&i| rows[i]).collect();
        let sub_pred: Vec<&Vec<f32>> = idx.iter().map(|&i| &pred.quality[i]).collect();
        let choice = best_single
            .get(name)
            .and_then(|best| choice_report(candidates, &subset, &sub_pred, best));
        datasets.insert(
            name.clone(),
            DatasetMetrics {
                prompts: idx.len(),
                quality_auc: auc(&scores, &labels),
                brier: (!scores.is_empty()).then(|| brier / scores.len() as f64),
                difficulty_spearman: spearman(&diff_pred, &diff_true),
                length_spearman: spearman(&neg_len, &diff_true),
                choice,
            },
        );
        if let (Some(s), Some(w)) = (
            candidates.iter().position(|c| c == STRONG),
            candidates.iter().position(|c| c == WEAK),
        ) {
            let router: Vec<f64> = idx
                .iter()
                .map(|&i| f64::from(pred.quality[i][s] - pred.quality[i][w]))
                .collect();
            if let Some(p) = pair_report(name, &subset, &router, "quality-gap", STRONG, WEAK) {
                pairs.push(p);
            }
        }
    }
    EvalReport {
        candidates: per_candidate,
        datasets,
        pairs,
    }
}

fn choice_report(candidates: &[String], rows: &[&Row], pred: &[&Vec<f32>], best: &str) -> Option<ChoiceReport> {
    let (mut router_q, mut best_q, mut oracle_q, mut random_q) = (0f64, 0f64, 0f64, 0f64);
    let (mut router_cost, mut best_cost, mut costs_known) = (0f64, 0f64, true);
    let mut n = 0usize;
    for (row, p) in rows.iter().zip(pred) {
        let Some(best_outcome) = row.outcomes.get(best).filter(|o| o.quality.is_some()) else { continue };
        let scored: Vec<(usize, f32)> = candidates
            .iter()
            .enumerate()
            .filter_map(|(j, m)| row.quality(m).map(|q| (j, q)))
            .collect();
        let Some(&(pick, q)) = scored.iter().max_by(|a, b| p[a.0].total_cmp(&p[b.0])) else { continue };
        n += 1;
        router_q += f64::from(q);
        best_q += f64::from(best_outcome.quality.unwrap_or(0.0));
        oracle_q += f64::from(scored.iter().map(|s| s.1).fold(0.0, f32::max));
        random_q += scored.iter().map(|s| f64::from(s.1)).sum::<f64>() / scored.len() as f64;
        match (row.outcomes.get(&candidates[pick]).and_then(|o| o.cost_usd), best_outcome.cost_usd) {
            (Some(a), Some(b)) => {
                router_cost += a;
                best_cost += b;
            }
            _ => costs_known = false,
        }
    }
    if n == 0 {
        return None;
    }
    let n_f = n as f64;
    Some(ChoiceReport {
        prompts: n,
        router_quality: router_q / n_f,
        router_cost_usd: costs_known.then_some(router_cost / n_f),
        best_single: best.to_owned(),
        best_single_quality: best_q / n_f,
        best_single_cost_usd: costs_known.then_some(best_cost / n_f),
        oracle_quality: oracle_q / n_f,
        random_quality: random_q / n_f,
    })
}

/// Per dataset, the model with the highest mean quality over `rows` (use training rows).
pub fn best_single_models(rows: &[&Row]) -> BTreeMap<String, String> {
    let mut sums: BTreeMap<String, BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    for row in rows {
        for (model, outcome) in &row.outcomes {
            if let Some(q) = outcome.quality {
                let e = sums.entry(row.kind.name().to_owned()).or_default().entry(model.clone()).or_default();
                e.0 += f64::from(q);
                e.1 += 1;
            }
        }
    }
    sums.into_iter()
        .filter_map(|(ds, models)| {
            models
                .into_iter()
                .max_by(|a, b| (a.1 .0 / a.1 .1 as f64).total_cmp(&(b.1 .0 / b.1 .1 as f64)))
                .map(|(m, _)| (ds, m))
        })
        .collect()
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

impl EvalReport {
    /// The end-of-training summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<34} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9}\n",
            "candidate", "n", "AUC", "Brier", "mean q", "pred q", "tok |ln|"
        ));
        for (model, m) in &self.candidates {
            s.push_str(&format!(
                "{:<34} {:>6} {:>7} {:>7.3} {:>7.3} {:>7.3} {:>9}\n",
                model,
                m.prompts,
                opt(m.auc),
                m.brier,
                m.mean_quality,
                m.mean_predicted,
                opt(m.tokens_mae_log)
            ));
        }
        s.push_str(&format!(
            "\n{:<12} {:>6} {:>7} {:>7} {:>10} {:>10}\n",
            "dataset", "n", "AUC", "Brier", "diff rho", "len rho"
        ));
        for (name, d) in &self.datasets {
            s.push_str(&format!(
                "{:<12} {:>6} {:>7} {:>7} {:>10} {:>10}\n",
                name,
                d.prompts,
                opt(d.quality_auc),
                opt(d.brier),
                opt(d.difficulty_spearman),
                opt(d.length_spearman)
            ));
        }
        let choices: Vec<_> = self.datasets.iter().filter_map(|(n, d)| d.choice.as_ref().map(|c| (n, c))).collect();
        if !choices.is_empty() {
            s.push_str(&format!(
                "\n{:<12} {:>6} {:>8} {:>30} {:>8} {:>8}\n",
                "argmax-q", "n", "router", "best single (by train)", "random", "oracle"
            ));
            for (name, c) in choices {
                s.push_str(&format!(
                    "{:<12} {:>6} {:>8.3} {:>30} {:>8.3} {:>8.3}\n",
                    name,
                    c.prompts,
                    c.router_quality,
                    format!("{} {:.3}", c.best_single, c.best_single_quality),
                    c.random_quality,
                    c.oracle_quality
                ));
            }
        }
        for p in &self.pairs {
            s.push_str(&p.table());
        }
        s
    }
}

impl PairReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "\n{} test: {} ({:.3}) vs {} ({:.3}), {} prompts\n{:<24} {:>7} {:>7} {:>7}\n",
            self.dataset,
            self.strong,
            self.strong_quality,
            self.weak,
            self.weak_quality,
            self.prompts,
            "router",
            "APGR",
            "CPT50",
            "CPT80"
        );
        for (name, c) in [
            (format!("selector ({})", self.router_signal), &self.router),
            ("prompt length".to_owned(), &self.length_baseline),
            ("random (200 draws)".to_owned(), &self.random),
        ] {
            s.push_str(&format!("{:<24} {:>7.3} {:>7.2} {:>7.2}\n", name, c.apgr, c.cpt50, c.cpt80));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_inverse_and_tied_scores() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auc(&[0.5, 0.5], &[true, true]), None);
    }

    #[test]
    fn spearman_of_monotone_data() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 41.0]).unwrap_or(0.0) - 1.0).abs() < 1e-9);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]).unwrap_or(0.0) + 1.0).abs() < 1e-9);
    }

    #[test]
    fn oracle_router_beats_random_and_random_is_near_half() {
        // Strong helps on the first half only.
        let strong: Vec<f64> = (0..100).map(|i| if i < 50 { 1.0 } else { 0.0 }).collect();
        let weak = vec![0.0; 100];
        let oracle: Vec<f64> = (0..100).map(|i| if i < 50 { 1.0 } else { 0.0 }).collect();
        let c = routing_curve(&oracle, &strong, &weak);
        assert!((c.apgr - 0.728).abs() < 1e-9, "{}", c.apgr);
        assert!(c.cpt50 <= 0.26 && c.cpt80 <= 0.41, "{c:?}");
        let r = random_curve(&strong, &weak, 300, 1);
        assert!((r.apgr - 0.5).abs() < 0.03, "{}", r.apgr);
    }
}
