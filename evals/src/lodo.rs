//! `switchyard eval lodo`: routing quality on kinds of prompt the selector never saw.
//!
//! A router that only wins on prompts like its training prompts is not worth its latency, and
//! independent router benchmarks find most published routers tie with a tuned kNN once the
//! test data moves. So the headline evaluation holds out a whole *task family* at a time —
//! science questions (ARC, from both RouterBench and RouterDC), code (MBPP, HumanEval, …),
//! Winogrande, maths (MATH, GSM8K-train) and open chat (Arena-Hard) — trains a fresh selector
//! on the training splits of every other family (no question of the held-out family, whichever
//! dataset it came from), and scores it on every prompt of the held-out family, beside simple
//! routers fitted on the same training prompts:
//!
//! - kNN and clusters over the same MiniLM embeddings (k tuned on a validation fifth),
//! - prompt length (gpt-4-1106-preview / Mixtral-8x7B, where both are candidates),
//! - a random mix of two models (the hull of the single models), the best single model,
//! - and the ensemble `selector + kNN`: the mean of the two quality estimates, the selector's
//!   cost, chosen by the same policy.
//!
//! Datasets with recorded or derivable costs are scored by AIQ over the cost range; datasets
//! without costs (RouterDC's open 7–8B models, priced alike) by the quality of the best choice
//! at equal cost. Every figure carries a 95% bootstrap interval over the held-out prompts, and
//! every difference is paired over the same resamples.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_model::policy::Price;
use router_model::{BertEmbedder, Checkpoint, CheckpointMeta, Embedder, EmbedderOptions, EmbedderRef, ModelSource};
use serde::Serialize;
use training::{Dataset, DatasetKind, DatasetSpec, Init, Row, Split, TrainConfig};

use crate::baselines::{self, Estimates, Labelled, Tuned};
use crate::error::{Error, Result};
use crate::metrics;
use crate::offline::{cost_weights, tradeoff_at, EvalSet};
use crate::prices::PriceTable;
use crate::report::{STRONG, WEAK};

/// A candidate is scored on a held-out family only if the training prompts label it this often.
pub const MIN_TRAINING_LABELS: usize = 50;
/// Weight of the selector's quality estimate in the `selector + kNN` ensemble.
pub const BLEND_SELECTOR_WEIGHT: f64 = 0.5;
/// Names of the two main router curves.
const SELECTOR: &str = "selector";
const ENSEMBLE: &str = "selector + kNN";
/// The curve that sends everything to the best single model on the training prompts (a
/// route default an operator could have picked without a router).
pub const TRAINING_BEST: &str = "best single model on the training prompts";
/// Predicted-utility margins below which the selector defers to the route default (here the
/// best single model on the training prompts): an ablation of `min_advantage`.
pub const UNSURE_MARGINS: &[f64] = &[0.02, 0.05, 0.1];
const SEED: u64 = 0x10d0;
/// Name of the family-bagged ensemble's curves.
const BAGGED: &str = "family-bagged ensemble";
/// How many standard deviations of the members' disagreement a candidate's advantage over the
/// default must clear.
const SURE_Z: &[f64] = &[1.0, 2.0, 3.0];

/// The task family a prompt belongs to: the unit held out together.
pub fn family(row: &Row) -> String {
    let task = row.task.to_ascii_lowercase();
    match row.kind {
        DatasetKind::ArenaHard => "chat".into(),
        DatasetKind::Llmrouter => "llmrouter-qa".into(),
        _ if task.contains("arc") => "science-qa".into(),
        _ if ["mbpp", "humaneval", "javascript", "code"].iter().any(|t| task.contains(t)) => "code".into(),
        _ if task.contains("wino") => "winogrande".into(),
        _ if task.contains("math") || task.contains("gsm8k") => "maths".into(),
        _ => task,
    }
}

/// Options of `switchyard eval lodo`.
#[derive(Debug, Clone)]
pub struct LodoOptions {
    pub datasets: Vec<DatasetSpec>,
    pub embedder_dir: Option<PathBuf>,
    /// Default: the shipped `evals/prices.toml`.
    pub prices: Option<PathBuf>,
    pub cache_dir: PathBuf,
    /// Where each fold's selector is kept, and reused while its training rows, candidates and
    /// configuration are unchanged (`.cache/lodo`).
    pub folds_dir: PathBuf,
    pub out: PathBuf,
    pub train: TrainConfig,
    /// Families to hold out (all that can be scored when empty).
    pub families: Vec<String>,
    /// The command line, quoted in the report.
    pub command: String,
}

/// How a fold is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Area under the quality–cost hull (RouterBench), over the single models' cost range.
    Aiq,
    /// Mean quality of the best point of a curve: the candidates cost alike.
    QualityAtEqualCost,
}

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::Aiq => "AIQ",
            Metric::QualityAtEqualCost => "quality (equal cost)",
        }
    }
}

/// A figure with its bootstrap 95% interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub value: f64,
    pub lo95: f64,
    pub hi95: f64,
}

impl Interval {
    fn from_draws(value: f64, draws: &[f64]) -> Self {
        let (lo95, hi95) = baselines::interval95(draws);
        Self { value, lo95, hi95 }
    }

    fn show(&self) -> String {
        format!("{:+.4} [{:+.4}, {:+.4}]", self.value, self.lo95, self.hi95)
    }
}

/// One curve of a fold.
#[derive(Debug, Clone, Serialize)]
pub struct CurveResult {
    pub name: String,
    /// Simple baseline (kNN, clusters, length, random mix): the selector must beat the best.
    pub baseline: bool,
    pub score: Interval,
    pub selector_minus: Interval,
    pub ensemble_minus: Interval,
}

/// APGR on the strong/weak pair, by the score each router ranks prompts with.
#[derive(Debug, Clone, Serialize)]
pub struct PairApgr {
    pub prompts: usize,
    pub selector: f64,
    pub ensemble: f64,
    /// The family-bagged ensemble's mean predicted gap.
    pub bagged: f64,
    pub knn: f64,
    pub clusters: f64,
    pub length: f64,
    pub oracle: f64,
}

/// One held-out family scored on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct FoldReport {
    pub family: String,
    pub dataset: String,
    pub tasks: Vec<String>,
    pub metric: Metric,
    pub train_examples: usize,
    pub test_prompts: usize,
    pub reference_prompts: usize,
    pub candidates: Vec<String>,
    /// The families left out by the members of the family-bagged ensemble scored here.
    pub members: Vec<String>,
    pub knn: Tuned,
    pub clusters: Tuned,
    pub curves: Vec<CurveResult>,
    /// The baseline with the highest score on the held-out prompts (chosen after the fact, in
    /// the baselines' favour).
    pub best_baseline: String,
    /// The model behind [`TRAINING_BEST`].
    pub training_best_model: String,
    pub selector_minus_best_baseline: Interval,
    pub ensemble_minus_best_baseline: Interval,
    pub pair: Option<PairApgr>,
    #[serde(skip)]
    draws: FoldDraws,
}

#[derive(Debug, Clone, Default)]
struct FoldDraws {
    /// Every router (not baseline) curve, by name: its score − the best baseline's, per resample.
    routers_minus_best: BTreeMap<String, Vec<f64>>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct LodoSummary {
    pub command: String,
    pub machine: String,
    pub resamples: usize,
    pub folds: Vec<FoldReport>,
    /// Mean over folds of selector − best baseline, and of the ensemble.
    pub mean_selector_minus_best_baseline: Option<Interval>,
    pub mean_ensemble_minus_best_baseline: Option<Interval>,
    /// Mean APGR over the folds that have the strong/weak pair.
    pub pooled_pair: Option<PairApgr>,
    /// Every router variant (the ablation): mean over folds of its score − the best baseline's.
    pub ablation: Vec<(String, Interval)>,
}

/// `switchyard eval lodo`: writes `report.md` and `summary.json` to `out`.
pub fn run_lodo(options: &LodoOptions) -> Result<LodoSummary> {
    let prices = PriceTable::load(options.prices.as_deref())?;
    let source = match &options.embedder_dir {
        Some(dir) => ModelSource::Dir(dir.clone()),
        None => ModelSource::default_dir(),
    };
    let embedder = BertEmbedder::load(&source, &EmbedderOptions::default())?;
    let datasets = training::data::load_all(&options.datasets)?;
    let embeddings = training::embed_cache::embed_prompts(&datasets, &options.cache_dir, &embedder)?;
    let embedder_ref = EmbedderRef { id: embedder.id().to_owned(), dim: embedder.dim() };

    let all_families: BTreeSet<String> = datasets.iter().flat_map(|d| d.rows.iter().map(family)).collect();
    let wanted: Vec<String> = if options.families.is_empty() {
        all_families.into_iter().collect()
    } else {
        for f in &options.families {
            if !all_families.contains(f) {
                return Err(Error::InvalidInput(format!("no family `{f}` in these datasets ({all_families:?})")));
            }
        }
        options.families.clone()
    };
    let candidates: Vec<String> = datasets.iter().flat_map(|d| d.models.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();

    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(format!("creating {}", options.out.display()), e))?;
    let mut folds = Vec::new();
    for held in &wanted {
        let train_rows = training_rows(&datasets, held);
        // Each dataset of the family with the candidates it can be scored on, and their prices.
        let scorable: Vec<(&Dataset, Coverage)> = datasets
            .iter()
            .filter(|d| d.rows.iter().any(|r| &family(r) == held))
            .map(|d| (d, coverage(d, held, &train_rows, &prices)))
            .filter(|(_, c)| c.candidates.len() >= 2)
            .collect();
        if scorable.is_empty() {
            eprintln!("lodo: {held}: no dataset has two of its models labelled by the other families; not scored");
            continue;
        }
        let examples = training::examples_for_rows(&train_rows, &embeddings, &candidates)?;
        let config = TrainConfig { progress: false, ..options.train.clone() };
        let selectors = FoldSelectors {
            full: fold_checkpoint(&options.folds_dir.join(held), &train_rows, &examples, &candidates, &config, &embedder_ref)?,
            members: family_members(&options.folds_dir.join(held), &train_rows, &embeddings, &candidates, &config, &embedder_ref)?,
        };
        for (dataset, covered) in scorable {
            match fold(held, dataset, &covered, &train_rows, examples.len(), &selectors, &embeddings) {
                Ok(report) => folds.push(report),
                Err(Error::InvalidInput(why)) => eprintln!("lodo: {held} on {}: not scored: {why}", dataset.kind),
                Err(e) => return Err(e),
            }
        }
    }

    let names: Vec<String> = folds.first().map(|f| f.draws.routers_minus_best.keys().cloned().collect()).unwrap_or_default();
    let ablation: Vec<(String, Interval)> = names
        .into_iter()
        .filter_map(|name| {
            let per_fold: Vec<(f64, &[f64])> = folds
                .iter()
                .filter_map(|f| {
                    let draws = f.draws.routers_minus_best.get(&name)?;
                    let value = f.curves.iter().find(|c| c.name == name)?.score.value - f.curves.iter().find(|c| c.name == f.best_baseline)?.score.value;
                    Some((value, draws.as_slice()))
                })
                .collect();
            (per_fold.len() == folds.len()).then(|| (name, mean_over_folds(&per_fold)))
        })
        .collect();
    let find = |name: &str| ablation.iter().find(|(n, _)| n == name).map(|(_, i)| *i);
    let (mean_selector, mean_ensemble) = (find(SELECTOR), find(ENSEMBLE));
    let pooled_pair = pooled_apgr(&folds);
    let summary = LodoSummary {
        command: options.command.clone(),
        machine: crate::machine(),
        resamples: baselines::RESAMPLES,
        folds,
        mean_selector_minus_best_baseline: mean_selector,
        mean_ensemble_minus_best_baseline: mean_ensemble,
        pooled_pair,
        ablation,
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = options.out.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    write("report.md", markdown(&summary).as_bytes())?;
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::InvalidInput(e.to_string()))?;
    write("summary.json", &json)?;
    Ok(summary)
}

/// The mean over folds of (value, per-resample draws), with the interval of the mean: the
/// r-th resamples of every fold averaged together, as folds are independent samples.
fn mean_over_folds(per_fold: &[(f64, &[f64])]) -> Interval {
    let k = per_fold.len().max(1) as f64;
    let value = per_fold.iter().map(|p| p.0).sum::<f64>() / k;
    let draws: Vec<f64> = (0..baselines::RESAMPLES).map(|r| per_fold.iter().map(|p| p.1.get(r).copied().unwrap_or(f64::NAN)).sum::<f64>() / k).collect();
    Interval::from_draws(value, &draws)
}

/// What a fold may train on: the training split of every other family, without any question
/// that also appears (in any dataset, any split) in the held-out family.
fn training_rows<'a>(datasets: &'a [Dataset], held: &str) -> Vec<&'a Row> {
    let held_keys: HashSet<String> = datasets.iter().flat_map(|d| d.rows.iter()).filter(|r| family(r) == held).map(Row::key).collect();
    datasets
        .iter()
        .flat_map(|d| d.rows.iter())
        .filter(|r| r.split == Split::Train && family(r) != held && !held_keys.contains(&r.key()))
        .collect()
}

/// The fold's selector: the one saved in `dir` by an earlier run when it was trained on the
/// same rows, candidates and configuration (its `training_data_hash` says so), else a fresh
/// one, saved there for the next run.
fn fold_checkpoint(dir: &std::path::Path, rows: &[&Row], examples: &[training::Example], candidates: &[String], config: &TrainConfig, embedder: &EmbedderRef) -> Result<Checkpoint> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(training::data::data_hash(rows.iter().copied()).as_bytes());
    hasher.update(serde_json::to_string(config).map_err(|e| Error::InvalidInput(e.to_string()))?.as_bytes());
    hasher.update(candidates.join("\n").as_bytes());
    let key = hasher.finalize().to_hex().to_string();
    if Checkpoint::read_meta(dir).is_ok_and(|m| m.training_data_hash == key && &m.embedder == embedder) {
        return Ok(Checkpoint::load(dir, &embedder.id, embedder.dim)?);
    }
    let trained = training::train::train(examples, candidates.len(), config, Init::Random)?;
    let meta = CheckpointMeta::new(trained.architecture.clone(), candidates.to_vec(), trained.feature_norm.clone(), embedder.clone(), key);
    Checkpoint::save(dir, &trained.varmap, &meta)?;
    Ok(Checkpoint::from_parts(meta, trained.selector)?)
}

/// A fold's selectors: the one trained on every training row, and its family-left-out members.
struct FoldSelectors {
    full: Checkpoint,
    members: Vec<Member>,
}

/// A selector trained on the fold's training rows less one more family, and how often those
/// rows label each candidate.
struct Member {
    left_out: String,
    checkpoint: Checkpoint,
    labels: BTreeMap<String, usize>,
}

/// One selector per family of the fold's training rows, each trained without that family: how
/// much their predictions disagree on a prompt says how much the selector's preference there
/// rests on what one family taught it, which is what a new family cannot confirm.
fn family_members(dir: &std::path::Path, train_rows: &[&Row], embeddings: &HashMap<String, Vec<f32>>, candidates: &[String], config: &TrainConfig, embedder: &EmbedderRef) -> Result<Vec<Member>> {
    let families: BTreeSet<String> = train_rows.iter().map(|r| family(r)).collect();
    let mut members = Vec::new();
    for left_out in families {
        let rows: Vec<&Row> = train_rows.iter().copied().filter(|r| family(r) != left_out).collect();
        let examples = training::examples_for_rows(&rows, embeddings, candidates)?;
        let checkpoint = fold_checkpoint(&dir.join(format!("without-{left_out}")), &rows, &examples, candidates, config, embedder)?;
        members.push(Member { left_out, checkpoint, labels: label_counts(&rows) });
    }
    Ok(members)
}

/// Rows of `dataset` as a dataset of their own (all in `split`), with `zero_cost` recorded as
/// every outcome's cost when the dataset records none (its candidates are priced alike).
fn subset(dataset: &Dataset, rows: Vec<Row>, split: Split, zero_cost: bool) -> Dataset {
    let rows = rows
        .into_iter()
        .map(|mut r| {
            r.split = split;
            if zero_cost {
                for o in r.outcomes.values_mut() {
                    o.cost_usd = Some(0.0);
                }
            }
            r
        })
        .collect::<Vec<_>>();
    let models = rows.iter().flat_map(|r| r.outcomes.keys().cloned()).collect();
    Dataset { kind: dataset.kind, path: dataset.path.clone(), rows, models, prices: dataset.prices.clone(), skipped: Vec::new() }
}

/// Whether `dataset` records no cost for the prompts of `family` (its candidates are then
/// priced alike).
fn costless(dataset: &Dataset, family_name: &str) -> bool {
    dataset
        .rows
        .iter()
        .filter(|r| family(r) == family_name)
        .all(|r| r.outcomes.values().all(|o| o.cost_usd.is_none() && o.output_tokens.is_none()))
}

/// How many of `rows` label each model.
fn label_counts(rows: &[&Row]) -> BTreeMap<String, usize> {
    let mut labels = BTreeMap::new();
    for r in rows {
        for (m, o) in &r.outcomes {
            if o.quality.is_some() {
                *labels.entry(m.clone()).or_default() += 1;
            }
        }
    }
    labels
}

/// The models of `dataset` a fold can score — labelled at least [`MIN_TRAINING_LABELS`] times
/// by the training prompts, and priced — with the prices it scores them at.
fn coverage(dataset: &Dataset, family_name: &str, train_rows: &[&Row], prices: &PriceTable) -> Coverage {
    let labels = label_counts(train_rows);
    let mut fold_prices = prices.clone();
    if costless(dataset, family_name) {
        for m in &dataset.models {
            fold_prices.0.insert(m.clone(), Price { input_usd_per_mtok: 0.0, output_usd_per_mtok: 0.0 });
        }
    }
    let covered = dataset
        .models
        .iter()
        .filter(|m| labels.get(m.as_str()).copied().unwrap_or(0) >= MIN_TRAINING_LABELS && fold_prices.get(m).is_some())
        .cloned()
        .collect();
    Coverage { candidates: covered, prices: fold_prices }
}

/// What [`coverage`] found.
struct Coverage {
    candidates: Vec<String>,
    prices: PriceTable,
}

/// Scores the held-out `family` on `dataset` with the fold's checkpoint.
fn fold(
    held: &str,
    dataset: &Dataset,
    coverage: &Coverage,
    train_rows: &[&Row],
    train_examples: usize,
    selectors: &FoldSelectors,
    embeddings: &HashMap<String, Vec<f32>>,
) -> Result<FoldReport> {
    let checkpoint = &selectors.full;
    let held_rows: Vec<Row> = dataset.rows.iter().filter(|r| family(r) == held).cloned().collect();
    let tasks: Vec<String> = held_rows.iter().map(|r| r.task.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let equal_cost = costless(dataset, held);
    let metric = if equal_cost { Metric::QualityAtEqualCost } else { Metric::Aiq };
    let (covered, fold_prices) = (&coverage.candidates, &coverage.prices);
    let mut embed = |texts: &[&str]| -> Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| embeddings.get(*t).cloned().ok_or_else(|| Error::InvalidInput("prompt without embedding".into()))).collect()
    };
    let test_data = subset(dataset, held_rows, Split::Test, equal_cost);
    let set = EvalSet::build(&test_data, Split::Test, checkpoint, fold_prices, Some(covered), None, &mut embed)?;
    // The simple routers learn from training prompts that label every scored candidate: of the
    // same dataset where it has other families, else of any dataset.
    let labels_all = |r: &Row| covered.iter().all(|m| r.quality(m).is_some());
    let same: Vec<Row> = train_rows.iter().filter(|r| r.kind == dataset.kind && labels_all(r)).map(|r| (*r).clone()).collect();
    let reference_rows = if same.len() >= 100 { same } else { train_rows.iter().filter(|r| labels_all(r)).map(|r| (*r).clone()).collect() };
    let reference_data = subset(dataset, reference_rows, Split::Train, equal_cost);
    let reference = EvalSet::build(&reference_data, Split::Train, checkpoint, fold_prices, Some(covered), None, &mut embed)?;
    if reference.candidates != set.candidates {
        return Err(Error::InvalidInput("the reference prompts do not label the same candidates".into()));
    }

    let labelled = Labelled { embeddings: &reference.embeddings, quality: &reference.quality, cost: &reference.cost };
    let knn = baselines::tune(&labelled, baselines::KNN_KS, baselines::knn);
    let clusters = baselines::tune(&labelled, baselines::CLUSTER_KS, baselines::cluster);
    let knn_estimates = baselines::knn(&labelled, &set.embeddings, knn.chosen);
    let cluster_estimates = baselines::cluster(&labelled, &set.embeddings, clusters.chosen);
    let ensemble = blend(&set, &knn_estimates, BLEND_SELECTOR_WEIGHT);

    let n = set.len();
    let m = set.candidates.len();
    let sweep_of = |s: &EvalSet| -> Vec<Vec<usize>> { cost_weights().into_iter().map(|l| s.choices(tradeoff_at(l))).collect() };
    let singles: Vec<Vec<usize>> = (0..m).map(|j| vec![j; n]).collect();
    let best_on_reference = reference.best_single(tradeoff_at(0.0));
    let pair = set.index_of(STRONG).zip(set.index_of(WEAK));
    let mut curves: Vec<(String, bool, Vec<Vec<usize>>)> = vec![
        (SELECTOR.into(), false, sweep_of(&set)),
        (ENSEMBLE.into(), false, sweep_of(&ensemble)),
    ];
    for margin in UNSURE_MARGINS {
        let choices = cost_weights().into_iter().map(|l| set.choices_with_default(tradeoff_at(l), best_on_reference, *margin)).collect();
        curves.push((format!("selector, default below {margin} advantage"), false, choices));
    }
    // The family-left-out members that label every scored candidate, beside the full selector.
    let mut member_sets = vec![set.clone()];
    let mut member_names = Vec::new();
    for member in selectors.members.iter().filter(|m| covered.iter().all(|c| m.labels.get(c).copied().unwrap_or(0) >= MIN_TRAINING_LABELS)) {
        let member_set = EvalSet::build(&test_data, Split::Test, &member.checkpoint, fold_prices, Some(covered), None, &mut embed)?;
        if member_set.candidates == set.candidates {
            member_sets.push(member_set);
            member_names.push(member.left_out.clone());
        }
    }
    let defaults: Vec<usize> = cost_weights().into_iter().map(|l| reference.best_single(tradeoff_at(l))).collect();
    curves.push((format!("{BAGGED} ({} members)", member_sets.len()), false, bagged_sweep(&member_sets, &defaults, None)));
    for z in SURE_Z {
        curves.push((format!("selector, default unless the members agree (z = {z})"), false, bagged_sweep(&member_sets, &defaults, Some(*z))));
    }
    curves.extend([
        (format!("kNN (k = {})", knn.chosen), true, knn_estimates.sweep()),
        (format!("clusters ({})", clusters.chosen), true, cluster_estimates.sweep()),
    ]);
    if let (Some((s, w)), Metric::Aiq) = (pair, metric) {
        let order = metrics::ranking(&set.lengths());
        let points = (0..=20).map(|i| set.split_choices(&order, ((f64::from(i) / 20.0 * n as f64).ceil() as usize).min(n), s, w)).collect();
        curves.push((format!("prompt length ({STRONG} / {WEAK})"), true, points));
    }
    match metric {
        Metric::Aiq => curves.push(("random mix of two models".into(), true, singles)),
        // At equal cost a mix of two models is never above the better one: the best single
        // model, re-chosen on every resample of the held-out prompts (in its favour).
        Metric::QualityAtEqualCost => curves.push(("best single model (chosen on the held-out prompts)".into(), true, singles)),
    }
    curves.push((TRAINING_BEST.into(), false, vec![vec![best_on_reference; n]]));

    let (full, draws) = score_draws(&set, metric, &curves.iter().map(|c| c.2.clone()).collect::<Vec<_>>());
    let results: Vec<CurveResult> = curves
        .iter()
        .enumerate()
        .map(|(c, (name, baseline, _))| {
            let diff = |a: usize| -> Interval {
                let d: Vec<f64> = draws[a].iter().zip(&draws[c]).map(|(x, y)| x - y).collect();
                Interval::from_draws(full[a] - full[c], &d)
            };
            CurveResult { name: name.clone(), baseline: *baseline, score: Interval::from_draws(full[c], &draws[c]), selector_minus: diff(0), ensemble_minus: diff(1) }
        })
        .collect();
    let best = (0..curves.len()).filter(|&c| curves[c].1).max_by(|&a, &b| full[a].total_cmp(&full[b])).unwrap_or(2);
    let pair_result = pair.map(|(s, w)| {
        let (qs, qw) = set.pair_columns(s, w);
        let gap = |e: &EvalSet| -> Vec<f64> {
            let (hs, hw) = (e.route[s].head, e.route[w].head);
            e.predictions.iter().map(|p| f64::from(p[hs].quality) - f64::from(p[hw].quality)).collect()
        };
        let est_gap = |e: &Estimates| -> Vec<f64> { e.quality.iter().map(|q| q[s] - q[w]).collect() };
        let gaps: Vec<Vec<f64>> = member_sets.iter().map(gap).collect();
        let bagged_gap: Vec<f64> = (0..set.len()).map(|i| gaps.iter().map(|g| g[i]).sum::<f64>() / gaps.len() as f64).collect();
        pair_apgr(&[qs, qw, gap(&set), gap(&ensemble), bagged_gap, est_gap(&knn_estimates), est_gap(&cluster_estimates), set.lengths()])
    });
    let minus_best = |c: usize| -> Vec<f64> { draws[c].iter().zip(&draws[best]).map(|(x, y)| x - y).collect() };
    let fold_draws = FoldDraws {
        routers_minus_best: (0..curves.len()).filter(|&c| !curves[c].1).map(|c| (curves[c].0.clone(), minus_best(c))).collect(),
    };
    Ok(FoldReport {
        family: held.to_owned(),
        dataset: dataset.kind.name().to_owned(),
        tasks,
        metric,
        train_examples,
        test_prompts: n,
        reference_prompts: reference.len(),
        candidates: set.candidates.clone(),
        members: member_names,
        knn,
        clusters,
        best_baseline: curves[best].0.clone(),
        training_best_model: set.candidates[best_on_reference].clone(),
        selector_minus_best_baseline: results[best].selector_minus,
        ensemble_minus_best_baseline: results[best].ensemble_minus,
        pair: pair_result,
        curves: results,
        draws: fold_draws,
    })
}

/// Per trade-off of the sweep, each prompt's choice. Without `gate`: the candidate with the
/// highest mean utility over the members (the first member is the full selector). With
/// `gate = Some(z)`: the full selector's choice, unless its utility advantage over the
/// trade-off's default (`defaults`: the best single model on the training prompts at that
/// trade-off), measured by every member, has a mean below `z` of its standard deviations — then
/// the default.
fn bagged_sweep(members: &[EvalSet], defaults: &[usize], gate: Option<f64>) -> Vec<Vec<usize>> {
    let Some(first) = members.first() else { return Vec::new() };
    let m = first.candidates.len();
    cost_weights()
        .into_iter()
        .zip(defaults)
        .map(|(lambda, &default)| {
            let tradeoff = tradeoff_at(lambda);
            (0..first.len())
                .map(|i| {
                    let utilities: Vec<Vec<f64>> = members
                        .iter()
                        .map(|s| {
                            let mut u = vec![f64::NEG_INFINITY; m];
                            for sc in s.scored(i, tradeoff) {
                                u[sc.candidate] = sc.utility;
                            }
                            u
                        })
                        .collect();
                    let k = utilities.len() as f64;
                    let argmax = |u: &[f64]| (0..m).max_by(|&a, &b| u[a].total_cmp(&u[b])).unwrap_or(default);
                    let Some(z) = gate else {
                        let mean: Vec<f64> = (0..m).map(|j| utilities.iter().map(|u| u[j]).sum::<f64>() / k).collect();
                        return argmax(&mean);
                    };
                    let best = argmax(&utilities[0]);
                    if best == default || utilities.len() < 2 {
                        return default;
                    }
                    let advantages: Vec<f64> = utilities.iter().map(|u| u[best] - u[default]).collect();
                    let a = advantages.iter().sum::<f64>() / k;
                    let sd = (advantages.iter().map(|x| (x - a).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
                    if a - z * sd > 0.0 { best } else { default }
                })
                .collect()
        })
        .collect()
}

/// The evaluation set with each prediction's quality replaced by `w`·selector + (1 − `w`)·kNN.
fn blend(set: &EvalSet, knn: &Estimates, w: f64) -> EvalSet {
    let mut predictions = set.predictions.clone();
    for (i, p) in predictions.iter_mut().enumerate() {
        for (j, c) in set.route.iter().enumerate() {
            let selector = f64::from(p[c.head].quality);
            p[c.head].quality = (w * selector + (1.0 - w) * knn.quality[i][j]) as f32;
        }
    }
    EvalSet { predictions, ..set.clone() }
}

/// Each curve's score on all prompts and on every bootstrap resample (the same resamples for
/// every curve, so differences are paired).
fn score_draws(set: &EvalSet, metric: Metric, curves: &[Vec<Vec<usize>>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let score = |rows: &[usize], curve: &[Vec<usize>]| -> f64 {
        match metric {
            Metric::Aiq => baselines::curve_aiq(&set.quality, &set.cost, rows, curve),
            Metric::QualityAtEqualCost => curve
                .iter()
                .map(|choices| rows.iter().map(|&i| set.quality[i][choices[i]]).sum::<f64>() / rows.len().max(1) as f64)
                .fold(f64::MIN, f64::max),
        }
    };
    let n = set.len();
    let all: Vec<usize> = (0..n).collect();
    let full = curves.iter().map(|c| score(&all, c)).collect();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut draws = vec![Vec::with_capacity(baselines::RESAMPLES); curves.len()];
    for _ in 0..baselines::RESAMPLES {
        let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n.max(1))).collect();
        for (d, c) in draws.iter_mut().zip(curves) {
            d.push(score(&rows, c));
        }
    }
    (full, draws)
}

/// APGR of each router from (strong quality, weak quality, selector gap, ensemble gap, kNN
/// gap, cluster gap, prompt length) per prompt.
fn pair_apgr(columns: &[Vec<f64>; 8]) -> PairApgr {
    let [qs, qw, selector, ensemble, bagged, knn, clusters, length] = columns;
    let apgr = |scores: &[f64]| metrics::routing_curve(scores, qs, qw).apgr;
    let truth: Vec<f64> = qs.iter().zip(qw).map(|(s, w)| s - w).collect();
    PairApgr {
        prompts: qs.len(),
        selector: apgr(selector),
        ensemble: apgr(ensemble),
        bagged: apgr(bagged),
        knn: apgr(knn),
        clusters: apgr(clusters),
        length: apgr(length),
        oracle: apgr(&truth),
    }
}

/// The mean over the folds that have the pair of each router's APGR on its fold (each fold's
/// router ranks only its own prompts, as a deployed router would).
fn pooled_apgr(folds: &[FoldReport]) -> Option<PairApgr> {
    let pairs: Vec<&PairApgr> = folds.iter().filter_map(|f| f.pair.as_ref()).collect();
    let k = pairs.len() as f64;
    let mean = |pick: fn(&PairApgr) -> f64| pairs.iter().map(|p| pick(p)).sum::<f64>() / k;
    (!pairs.is_empty()).then(|| PairApgr {
        prompts: pairs.iter().map(|p| p.prompts).sum(),
        selector: mean(|p| p.selector),
        ensemble: mean(|p| p.ensemble),
        bagged: mean(|p| p.bagged),
        knn: mean(|p| p.knn),
        clusters: mean(|p| p.clusters),
        length: mean(|p| p.length),
        oracle: mean(|p| p.oracle),
    })
}

/// `report.md`.
pub fn markdown(summary: &LodoSummary) -> String {
    let mut s = String::new();
    s.push_str("# Routing on task families the selector never saw (leave one family out)\n\n");
    s.push_str(&format!("Produced by\n\n```sh\n{}\n```\n\non {}.\n\n", summary.command, summary.machine));
    s.push_str(
        "Each fold trains a fresh selector on the training splits of every *other* task family (no question of \
         the held-out family from any dataset) and scores it on every prompt of the held-out family. kNN and \
         clusters are fitted on the same training prompts (those that label every scored candidate; k tuned \
         on a validation fifth of them). `selector + kNN` averages the two quality estimates. Datasets with \
         costs are scored by AIQ; RouterDC (no costs, seven open 7–8B models) by the quality of the best \
         choice at equal cost. The best baseline of a fold is the best of kNN, clusters, prompt length and \
         the random mix *on the held-out prompts* (chosen after the fact, in its favour). 95% intervals from \
         ",
    );
    s.push_str(&format!("{} paired bootstrap resamples of the held-out prompts.\n\n", summary.resamples));
    s.push_str("| held-out family | dataset | metric | prompts | selector | selector + kNN | best baseline | selector − best baseline | (selector + kNN) − best baseline |\n|---|---|---|---|---|---|---|---|---|\n");
    for f in &summary.folds {
        let score = |name: &str| f.curves.iter().find(|c| c.name == name).map_or(f64::NAN, |c| c.score.value);
        let best = f.curves.iter().find(|c| c.name == f.best_baseline).map_or(f64::NAN, |c| c.score.value);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {} {:.4} | {} | {} |\n",
            f.family,
            f.dataset,
            f.metric.label(),
            f.test_prompts,
            score(SELECTOR),
            score(ENSEMBLE),
            f.best_baseline,
            best,
            f.selector_minus_best_baseline.show(),
            f.ensemble_minus_best_baseline.show()
        ));
    }
    if let (Some(sel), Some(ens)) = (&summary.mean_selector_minus_best_baseline, &summary.mean_ensemble_minus_best_baseline) {
        s.push_str(&format!("| **mean over folds** | | | | | | | **{}** | **{}** |\n\n", sel.show(), ens.show()));
    }
    if !summary.ablation.is_empty() {
        s.push_str("Ablation — every router variant, mean over the folds of its score − the fold's best baseline (paired 95% interval):\n\n| router | mean − best baseline [95%] |\n|---|---|\n");
        for (name, interval) in &summary.ablation {
            s.push_str(&format!("| {name} | {} |\n", interval.show()));
        }
        s.push('\n');
    }
    if let Some(p) = &summary.pooled_pair {
        s.push_str(&format!(
            "**{STRONG} vs {WEAK}**, mean over the folds that have both ({} held-out prompts, each fold's router ranking its own): APGR selector {:.3}, selector + kNN {:.3}, family-bagged ensemble {:.3}, kNN {:.3}, clusters {:.3}, prompt length {:.3}, random 0.5, oracle {:.3}.\n\n",
            p.prompts, p.selector, p.ensemble, p.bagged, p.knn, p.clusters, p.length, p.oracle
        ));
    }
    for f in &summary.folds {
        s.push_str(&format!(
            "## {} on {} ({})\n\n{} held-out prompts (tasks: {}); selector trained on {} prompts; kNN / clusters fitted on {} prompts (k = {}, {} clusters); best single model on the training prompts: {}. Candidates: {}. Family-bagged members leave out: {}.\n\n",
            f.family,
            f.dataset,
            f.metric.label(),
            f.test_prompts,
            f.tasks.join(", "),
            f.train_examples,
            f.reference_prompts,
            f.knn.chosen,
            f.clusters.chosen,
            f.training_best_model,
            f.candidates.join(", "),
            f.members.join(", ")
        ));
        s.push_str("| curve | score [95%] | selector − curve [95%] | (selector + kNN) − curve [95%] |\n|---|---|---|---|\n");
        for c in &f.curves {
            s.push_str(&format!(
                "| {}{} | {:.4} [{:.4}, {:.4}] | {} | {} |\n",
                c.name,
                if c.baseline { " *(baseline)*" } else { "" },
                c.score.value,
                c.score.lo95,
                c.score.hi95,
                c.selector_minus.show(),
                c.ensemble_minus.show()
            ));
        }
        if let Some(p) = &f.pair {
            s.push_str(&format!(
                "\n{STRONG} vs {WEAK}: APGR selector {:.3}, selector + kNN {:.3}, family-bagged ensemble {:.3}, kNN {:.3}, clusters {:.3}, prompt length {:.3}, oracle {:.3}.\n",
                p.selector, p.ensemble, p.bagged, p.knn, p.clusters, p.length, p.oracle
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: DatasetKind, task: &str) -> Row {
        Row { prompt: "p".into(), kind, task: task.into(), split: Split::Train, outcomes: BTreeMap::new() }
    }

    #[test]
    fn families_group_the_same_kind_of_task_across_datasets() {
        assert_eq!(family(&row(DatasetKind::Routerbench, "arc-challenge")), family(&row(DatasetKind::Routerdc, "arc-easy")));
        assert_eq!(family(&row(DatasetKind::Routerbench, "mbpp")), family(&row(DatasetKind::Routerdc, "humaneval")));
        assert_eq!(family(&row(DatasetKind::Routerdc, "javascript")), "code");
        assert_eq!(family(&row(DatasetKind::Routerdc, "math-prealgebra")), family(&row(DatasetKind::Routerdc, "gsm8k-train")));
        assert_eq!(family(&row(DatasetKind::ArenaHard, "arena-hard")), "chat");
        assert_ne!(family(&row(DatasetKind::Routerbench, "winogrande")), family(&row(DatasetKind::Routerbench, "arc-challenge")));
    }

    #[test]
    fn a_fold_never_trains_on_its_family_nor_on_a_question_it_shares() {
        let at = |kind, task: &str, prompt: &str, split| Row { prompt: prompt.into(), split, ..row(kind, task) };
        let data = |kind, rows: Vec<Row>| Dataset { kind, path: PathBuf::new(), rows, models: BTreeSet::new(), prices: BTreeMap::new(), skipped: Vec::new() };
        let datasets = vec![
            data(DatasetKind::Routerbench, vec![
                at(DatasetKind::Routerbench, "arc-challenge", "Which gas do plants absorb?", Split::Test),
                at(DatasetKind::Routerbench, "mbpp", "Write a function to reverse a list.", Split::Train),
                at(DatasetKind::Routerbench, "mbpp", "Write a function to sort a list.", Split::Test),
            ]),
            data(DatasetKind::Routerdc, vec![
                at(DatasetKind::Routerdc, "arc-easy", "What is the boiling point of water?", Split::Train),
                // The same question as a held-out one, filed under another task: left out too.
                at(DatasetKind::Routerdc, "mbpp", "Which gas do plants absorb?", Split::Train),
                at(DatasetKind::Routerdc, "humaneval", "def add(a, b):", Split::Train),
            ]),
        ];
        let prompts = |held: &str| training_rows(&datasets, held).iter().map(|r| r.prompt.clone()).collect::<Vec<_>>();
        assert_eq!(prompts("science-qa"), ["Write a function to reverse a list.", "def add(a, b):"]);
        assert_eq!(prompts("code"), ["What is the boiling point of water?"]);
    }

    /// One prompt, two free candidates (utility = predicted quality at every trade-off); each
    /// member's predicted qualities.
    fn members_predicting(qualities: &[[f32; 2]]) -> Vec<EvalSet> {
        use router_model::policy::Candidate;
        use router_model::Prediction;
        let free = Price { input_usd_per_mtok: 0.0, output_usd_per_mtok: 0.0 };
        qualities
            .iter()
            .map(|q| EvalSet {
                dataset: "test".into(),
                rows: vec![row(DatasetKind::Routerbench, "mbpp")],
                split_index: vec![0],
                candidates: vec!["default".into(), "other".into()],
                route: (0..2).map(|j| Candidate { index: j, head: j, price: free }).collect(),
                predictions: vec![q.iter().map(|&quality| Prediction { model_id: String::new(), quality, latency_ms: 1.0, output_tokens: 10.0 }).collect()],
                embeddings: vec![vec![0.0]],
                prompt_tokens: vec![10],
                quality: vec![vec![0.0, 0.0]],
                cost: vec![vec![0.0, 0.0]],
                dropped: 0,
                cost_source: "",
            })
            .collect()
    }

    #[test]
    fn the_members_gate_keeps_the_default_unless_they_agree_on_the_advantage() {
        let defaults = vec![0; cost_weights().len()];
        let first_choice = |members: &[EvalSet], gate| bagged_sweep(members, &defaults, gate)[0][0];
        // Every member sees the other candidate ahead by about 0.2: served.
        let agree = members_predicting(&[[0.5, 0.7], [0.5, 0.68], [0.5, 0.72]]);
        assert_eq!(first_choice(&agree, Some(2.0)), 1);
        // The full selector sees it ahead, the members split (+0.2, −0.1, +0.4): the default.
        let split = members_predicting(&[[0.5, 0.7], [0.5, 0.4], [0.5, 0.9]]);
        assert_eq!(first_choice(&split, Some(1.0)), 0);
        assert_eq!(first_choice(&split, Some(0.1)), 1, "a low enough bar lets the mean advantage through");
        // Ungated, the members' mean utility chooses: here the other candidate (mean 0.667).
        assert_eq!(first_choice(&split, None), 1);
        let mean_prefers_default = members_predicting(&[[0.5, 0.7], [0.5, 0.1], [0.5, 0.5]]);
        assert_eq!(first_choice(&mean_prefers_default, None), 0);
    }

    #[test]
    fn intervals_bracket_their_draws() {
        let draws: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let i = Interval::from_draws(0.5, &draws);
        assert!((i.lo95 - 0.025).abs() < 0.002 && (i.hi95 - 0.975).abs() < 0.002, "{i:?}");
    }
}
