//! `switchyard train`: from public routing datasets and the gateway's own outcome log to a
//! selector checkpoint the gateway serves.
//!
//! - [`data`]: importers (RouterBench, Arena-Hard, LLMRouter, RouterDC) → full-information
//!   rows with canonical model ids, each dataset's split, cross-dataset split reconciliation.
//! - [`embed_cache`]: prompt embeddings with the serving embedder, cached on disk by text hash.
//! - [`train`]: seeded AdamW training with early stopping and the auxiliary difficulty head.
//! - [`eval`]: per-candidate AUC/Brier, length error, APGR/CPT beside length and random
//!   baselines; [`run`] adds leave-one-dataset-out.
//! - [`db`]: training rows from `request_log` + `feedback` (clipped-IPS weighted), off-policy
//!   evaluation (IPS, doubly robust) against the active checkpoint, atomic promotion.
//! - [`learn`]: `switchyard learn`, the scheduled turn of the loop: only when the log changed,
//!   warm-started, promoted only on a significant off-policy improvement.
//!
//! [`run`] is the whole command; the binary only parses arguments into [`TrainOptions`].

pub mod data;
pub mod db;
pub mod embed_cache;
pub mod error;
pub mod eval;
pub mod learn;
pub mod neighbours;
pub mod progress;
pub mod train;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use router_model::{
    BertEmbedder, Checkpoint, CheckpointMeta, Embedder, EmbedderOptions, EmbedderRef, ModelSource,
    RequestFeatures,
};
use serde::Serialize;
use serde_json::json;

pub use data::{Dataset, DatasetKind, DatasetSpec, Row, Split};
pub use error::{Error, Result};
pub use eval::{EvalReport, PairReport};
pub use train::{Example, Init, TrainConfig, Trained};

use crate::db::LoggedRequest;

/// Which candidates the checkpoint gets heads for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateChoice {
    /// Every model of every dataset (and the log).
    All,
    /// Only these canonical ids.
    Only(Vec<String>),
}

impl std::str::FromStr for CandidateChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Self::All),
            list => Ok(Self::Only(
                list.split(',')
                    .map(|m| router_model::canonical_model_id(m.trim()))
                    .filter(|m| !m.is_empty())
                    .collect(),
            )),
        }
    }
}

/// Everything `switchyard train` takes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub datasets: Vec<DatasetSpec>,
    /// Outcome log to learn from (`sqlite://…` or `postgres://…`).
    pub from_db: Option<String>,
    /// Only logged rows from this RFC 3339 time on.
    pub since: Option<String>,
    /// Only logged rows of these routes (all when empty).
    pub routes: Vec<String>,
    /// Where the new checkpoint is written.
    pub out: PathBuf,
    pub candidates: CandidateChoice,
    pub train: TrainConfig,
    /// Also run leave-one-dataset-out.
    pub lodo: bool,
    /// The serving checkpoint: the baseline of off-policy evaluation, the starting point of
    /// log-only training, and what `promote` replaces.
    pub active: Option<PathBuf>,
    pub promote: bool,
    /// Required DR improvement (quality points, 0..1 scale) at the 95% lower bound.
    pub promote_margin: f64,
    pub embedder_dir: Option<PathBuf>,
    pub embedder_max_tokens: usize,
    pub cache_dir: PathBuf,
}

impl TrainOptions {
    pub fn new(out: PathBuf) -> Self {
        Self {
            datasets: Vec::new(),
            from_db: None,
            since: None,
            routes: Vec::new(),
            out,
            candidates: CandidateChoice::All,
            train: TrainConfig::default(),
            lodo: false,
            active: None,
            promote: false,
            promote_margin: 0.01,
            embedder_dir: None,
            embedder_max_tokens: router_model::DEFAULT_MAX_TOKENS,
            cache_dir: embed_cache::default_cache_root(),
        }
    }
}

/// One leave-one-dataset-out fold: trained without any question of `held_out`, evaluated on
/// its test split.
#[derive(Debug, Clone, Serialize)]
pub struct LodoRow {
    pub held_out: String,
    pub train_examples: usize,
    pub test_prompts: usize,
    /// Spearman of predicted difficulty vs actual mean quality, and of −length.
    pub difficulty_spearman: Option<f64>,
    pub length_spearman: Option<f64>,
    /// Pooled quality AUC over the held-out dataset's models that other datasets trained.
    pub covered_quality_auc: Option<f64>,
    pub covered_candidates: Vec<String>,
    pub pair: Option<PairReport>,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub checkpoint: PathBuf,
    pub training_seconds: f64,
    pub embedding_seconds: f64,
    pub test: Option<EvalReport>,
    pub lodo: Vec<LodoRow>,
    pub ope: Option<db::OpeReport>,
    pub promotion: Option<db::PromotionRecord>,
    /// The printed summary.
    pub summary: String,
}

/// Rows and their embeddings.
struct Corpus {
    datasets: Vec<Dataset>,
    embeddings: HashMap<String, Vec<f32>>,
}

impl Corpus {
    fn rows(&self, split: Split) -> Vec<&Row> {
        self.datasets
            .iter()
            .flat_map(|d| d.rows.iter())
            .filter(|r| r.split == split)
            .collect()
    }

    fn input<'a>(&'a self, row: &Row) -> Result<(&'a [f32], RequestFeatures)> {
        let e = self
            .embeddings
            .get(&row.prompt)
            .ok_or_else(|| Error::InvalidInput("prompt without embedding".into()))?;
        Ok((e.as_slice(), RequestFeatures::for_prompt(&row.prompt)))
    }
}

/// Turns dataset rows into examples for `candidates`.
fn examples_from_rows(
    corpus: &Corpus,
    rows: &[&Row],
    candidates: &[String],
) -> Result<Vec<Example>> {
    examples_for_rows(rows, &corpus.embeddings, candidates)
}

/// Training examples from dataset rows (every labelled candidate of `candidates`, the prompt's
/// mean quality as its difficulty), with each prompt's embedding looked up in `embeddings`.
pub fn examples_for_rows(
    rows: &[&Row],
    embeddings: &HashMap<String, Vec<f32>>,
    candidates: &[String],
) -> Result<Vec<Example>> {
    rows.iter()
        .map(|row| {
            let embedding = embeddings
                .get(&row.prompt)
                .ok_or_else(|| Error::InvalidInput("prompt without embedding".into()))?;
            let features = RequestFeatures::for_prompt(&row.prompt);
            let mut e = Example::empty(embedding.to_vec(), features, candidates.len(), row.key());
            for (j, model) in candidates.iter().enumerate() {
                if let Some(o) = row.outcomes.get(model) {
                    e.quality[j] = o.quality;
                    e.log_output_tokens[j] = o.output_tokens.map(f32::ln);
                }
            }
            e.difficulty = row.mean_quality();
            Ok(e)
        })
        .collect()
}

/// Examples from logged traffic: the served model's feedback (weighted by clipped inverse
/// propensity), latency and output tokens.
fn examples_from_log(
    rows: &[&LoggedRequest],
    candidates: &[String],
    dim: usize,
) -> (Vec<Example>, usize) {
    let mut skipped = 0;
    let mut out = Vec::new();
    for row in rows {
        let (Some(embedding), Some(head)) = (
            row.embedding.as_ref().filter(|e| e.len() == dim),
            db::head_of(candidates, &row.model),
        ) else {
            skipped += 1;
            continue;
        };
        let mut e = Example::empty(
            embedding.clone(),
            row.features(),
            candidates.len(),
            row.id.clone(),
        );
        if row.succeeded() {
            if let Some(score) = row.feedback {
                e.quality[head] = Some(score.clamp(0.0, 1.0) as f32);
                e.quality_weight[head] = row.ips_weight() as f32;
            }
            if row.latency_ms > 0.0 {
                e.log_latency_ms[head] = Some((row.latency_ms as f32).ln());
            }
            if let Some(t) = row.completion_tokens.filter(|t| *t > 0) {
                e.log_output_tokens[head] = Some((t as f32).ln());
            }
        }
        out.push(e);
    }
    (out, skipped)
}

/// Replaces each logged quality target with the mean rating of the `k` nearest examples
/// (cosine on the embedding, itself included) rated for the same model, fewer where the model
/// answered fewer than 5·k rows ([`neighbours::neighbourhood`]). The similarities are one
/// matrix product per model in blocks of rows: quadratic in the rows a model served, a second
/// or two for a few thousand.
fn smooth_log_ratings(
    examples: &mut [Example],
    num_candidates: usize,
    k: usize,
    own_share: f32,
) -> Result<()> {
    if !smoothing_moves_ratings(k, own_share) {
        return Ok(());
    }
    let own_share = own_share.clamp(0.0, 1.0);
    for head in 0..num_candidates {
        let rated: Vec<usize> = (0..examples.len())
            .filter(|&i| examples[i].quality[head].is_some())
            .collect();
        let n = rated.len();
        let take = neighbours::neighbourhood(k, n);
        if take <= 1 {
            continue;
        }
        let ratings: Vec<f32> = rated
            .iter()
            .filter_map(|&i| examples[i].quality[head])
            .collect();
        let dim = examples[rated[0]].embedding.len();
        let unit = neighbours::unit_length(rated.iter().map(|&i| examples[i].embedding.as_slice()));
        let unit = candle_core::Tensor::from_vec(unit, (n, dim), &candle_core::Device::Cpu)?;
        let mut smoothed = Vec::with_capacity(n);
        neighbours::each_nearest(&unit, &unit, take, |_, nearest| {
            smoothed.push(nearest.iter().map(|&j| ratings[j as usize]).sum::<f32>() / take as f32);
        })?;
        for ((&i, value), own) in rated.iter().zip(smoothed).zip(&ratings) {
            examples[i].quality[head] = Some(own_share * own + (1.0 - own_share) * value);
        }
    }
    Ok(())
}

/// Whether [`smooth_log_ratings`] with `k` neighbours and this own share changes any rating
/// (a neighbourhood of one, or an own share of 1, keeps the raw ratings).
fn smoothing_moves_ratings(k: usize, own_share: f32) -> bool {
    k > 1 && own_share < 1.0
}

/// The log's examples with each rated target replaced by the mean of two fits' predictions
/// for it: one network trained (beside `base`) on the raw ratings, one on the neighbourhood
/// targets of [`smooth_log_ratings`] ([`TrainConfig::log_label_two_fits`]).
fn two_fit_log_ratings(
    base: &[Example],
    log: Vec<Example>,
    num_candidates: usize,
    config: &TrainConfig,
    init: Init<'_>,
) -> Result<Vec<Example>> {
    let mut smoothed = log.clone();
    smooth_log_ratings(
        &mut smoothed,
        num_candidates,
        config.log_label_neighbours,
        config.log_label_own_share,
    )?;
    let inputs: Vec<(&[f32], RequestFeatures)> = log
        .iter()
        .map(|e| (e.embedding.as_slice(), e.features))
        .collect();
    let fit = |targets: &[Example]| -> Result<eval::Predictions> {
        let mut all = base.to_vec();
        all.extend_from_slice(targets);
        let trained = train::train(&all, num_candidates, config, init)?;
        eval::predict(&trained.selector, &trained.feature_norm, &inputs)
    };
    let (raw_fit, smoothed_fit) = (fit(&log)?, fit(&smoothed)?);
    let mut out = log;
    for (i, e) in out.iter_mut().enumerate() {
        for (head, target) in e.quality.iter_mut().enumerate() {
            if target.is_some() {
                *target = Some((raw_fit.quality[i][head] + smoothed_fit.quality[i][head]) / 2.0);
            }
        }
    }
    Ok(out)
}

fn choose_candidates(
    choice: &CandidateChoice,
    datasets: &[Dataset],
    logged: &[LoggedRequest],
    active: Option<&Checkpoint>,
) -> Result<Vec<String>> {
    let candidates: Vec<String> = match choice {
        CandidateChoice::Only(list) => list.clone(),
        CandidateChoice::All if !datasets.is_empty() => {
            let mut set: BTreeSet<String> = datasets
                .iter()
                .flat_map(|d| d.models.iter().cloned())
                .collect();
            if let Some(a) = active {
                // Logged models the active checkpoint knows keep their heads.
                set.extend(logged.iter().filter_map(|r| {
                    db::head_of(a.candidates(), &r.model).map(|h| a.candidates()[h].clone())
                }));
            }
            set.into_iter().collect()
        }
        CandidateChoice::All => match active {
            Some(a) => a.candidates().to_vec(),
            None => logged
                .iter()
                .map(|r| router_model::canonical_model_id(&r.model))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        },
    };
    if candidates.is_empty() {
        return Err(Error::InvalidInput(
            "no candidate models: give --dataset or --from-db with logged traffic".into(),
        ));
    }
    Ok(candidates)
}

fn load_embedder(opts: &TrainOptions) -> Result<BertEmbedder> {
    let source = match &opts.embedder_dir {
        Some(dir) => ModelSource::Dir(dir.clone()),
        None => ModelSource::default_dir(),
    };
    let options = EmbedderOptions {
        max_tokens: opts.embedder_max_tokens,
        ..EmbedderOptions::default()
    };
    Ok(BertEmbedder::load(&source, &options)?)
}

fn eval_on(
    trained_selector: &router_model::Selector,
    norm: &router_model::FeatureNorm,
    corpus: &Corpus,
    rows: &[&Row],
    candidates: &[String],
    best: &BTreeMap<String, String>,
) -> Result<(EvalReport, eval::Predictions)> {
    let inputs = rows
        .iter()
        .map(|r| corpus.input(r))
        .collect::<Result<Vec<_>>>()?;
    let pred = eval::predict(trained_selector, norm, &inputs)?;
    Ok((eval::evaluate(candidates, rows, &pred, best), pred))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `switchyard train`.
pub async fn run(opts: &TrainOptions) -> Result<RunReport> {
    if opts.datasets.is_empty() && opts.from_db.is_none() {
        return Err(Error::InvalidInput(
            "nothing to train on: give --dataset KIND:PATH and/or --from-db URL".into(),
        ));
    }
    if opts.promote && opts.active.is_none() {
        return Err(Error::InvalidInput(
            "--promote needs --active DIR (the serving checkpoint)".into(),
        ));
    }
    let mut summary = String::new();

    // Datasets.
    let mut datasets = Vec::new();
    if !opts.datasets.is_empty() {
        datasets = opts
            .datasets
            .iter()
            .map(data::load)
            .collect::<Result<Vec<_>>>()?;
        let reconciled = data::reconcile_splits(&mut datasets);
        for d in &datasets {
            summary.push_str(&format!(
                "{:<12} {:>6} train {:>6} test  {:>2} models  {}\n",
                d.kind.name(),
                d.count(Split::Train),
                d.count(Split::Test),
                d.models.len(),
                d.path.display()
            ));
            for s in &d.skipped {
                summary.push_str(&format!("  skipped {s}\n"));
            }
        }
        summary.push_str(&format!(
            "split reconciliation: {} duplicated training rows dropped, {} rows moved to test, {} to train\n",
            reconciled.dropped_train_duplicates, reconciled.moved_to_test, reconciled.moved_to_train
        ));
    }

    // Logged traffic and the active checkpoint.
    let logged = match &opts.from_db {
        Some(url) => db::load_logged_routes(url, opts.since.as_deref(), &opts.routes).await?,
        None => Vec::new(),
    };
    let active = match &opts.active {
        Some(dir) if dir.join(router_model::checkpoint::META_FILE).is_file() => {
            let meta = Checkpoint::read_meta(dir)?;
            Some(Checkpoint::load(dir, &meta.embedder.id, meta.embedder.dim)?)
        }
        Some(dir) if opts.promote => {
            return Err(Error::InvalidInput(format!(
                "--active {}: no checkpoint there",
                dir.display()
            )));
        }
        _ => None,
    };

    // Embeddings.
    let embed_started = Instant::now();
    let mut embeddings = HashMap::new();
    let embedder_ref = if !datasets.is_empty() {
        let embedder = load_embedder(opts)?;
        embeddings = embed_cache::embed_prompts(&datasets, &opts.cache_dir, &embedder)?;
        EmbedderRef {
            id: embedder.id().to_owned(),
            dim: embedder.dim(),
        }
    } else if let Some(a) = &active {
        a.meta.embedder.clone()
    } else {
        let embedder = load_embedder(opts)?;
        EmbedderRef {
            id: embedder.id().to_owned(),
            dim: embedder.dim(),
        }
    };
    let embedding_seconds = embed_started.elapsed().as_secs_f64();
    if let Some(a) = &active {
        if a.meta.embedder != embedder_ref {
            return Err(Error::InvalidInput(format!(
                "the active checkpoint was trained on embedder {} ({}-d), this run uses {} ({}-d)",
                a.meta.embedder.id, a.meta.embedder.dim, embedder_ref.id, embedder_ref.dim
            )));
        }
    }
    let corpus = Corpus {
        datasets,
        embeddings,
    };

    let candidates =
        choose_candidates(&opts.candidates, &corpus.datasets, &logged, active.as_ref())?;
    let train_rows = corpus.rows(Split::Train);
    let mut examples = examples_from_rows(&corpus, &train_rows, &candidates)?;
    let (log_train, log_held) = db::time_split(&logged);
    let init = match (&active, &opts.active) {
        (Some(a), Some(dir))
            if opts.train.warm_start
                && corpus.datasets.is_empty()
                && a.candidates() == candidates.as_slice() =>
        {
            Init::From(dir)
        }
        _ => Init::Random,
    };
    if opts.from_db.is_some() {
        let (mut log_examples, skipped) =
            examples_from_log(&log_train, &candidates, embedder_ref.dim);
        // Two fits only when the neighbourhood targets differ from the raw ratings: otherwise
        // both fits would be the same network, and raw ratings were asked for.
        if opts.train.log_label_two_fits
            && smoothing_moves_ratings(opts.train.log_label_neighbours, opts.train.log_label_own_share)
        {
            log_examples =
                two_fit_log_ratings(&examples, log_examples, candidates.len(), &opts.train, init)?;
        } else {
            smooth_log_ratings(
                &mut log_examples,
                candidates.len(),
                opts.train.log_label_neighbours,
                opts.train.log_label_own_share,
            )?;
        }
        summary.push_str(&format!(
            "outcome log: {} rows ({} for training, {} held out for off-policy evaluation; {} training rows without a usable embedding or known model skipped)\n",
            logged.len(),
            log_examples.len(),
            log_held.len(),
            skipped
        ));
        examples.extend(log_examples);
    }

    let trained = train::train(&examples, candidates.len(), &opts.train, init)?;
    summary.push_str(&format!(
        "trained {} candidates on {} examples ({} fit, {} validation): {} epochs, best {} ({:.1} s; embedding {:.1} s)\n",
        candidates.len(),
        examples.len(),
        trained.fit_examples,
        trained.validation_examples,
        trained.history.len(),
        trained.best_epoch,
        trained.seconds,
        embedding_seconds
    ));
    for note in &trained.notes {
        summary.push_str(&format!("note: {note}\n"));
    }

    // Test-split evaluation.
    let test_rows = corpus.rows(Split::Test);
    let best = eval::best_single_models(&train_rows);
    let test = if test_rows.is_empty() {
        None
    } else {
        let (report, _) = eval_on(
            &trained.selector,
            &trained.feature_norm,
            &corpus,
            &test_rows,
            &candidates,
            &best,
        )?;
        summary.push_str("\nTest split (never trained on):\n");
        summary.push_str(&report.table());
        Some(report)
    };

    // Off-policy evaluation against the active checkpoint.
    let ope = match (&active, log_held.is_empty()) {
        (Some(a), false) => {
            let held: Vec<&LoggedRequest> = log_held
                .iter()
                .copied()
                .filter(|r| {
                    r.embedding
                        .as_ref()
                        .is_some_and(|e| e.len() == embedder_ref.dim)
                })
                .collect();
            let new_predict = |r: &LoggedRequest| -> Result<Vec<router_model::Prediction>> {
                let e = r.embedding.as_deref().unwrap_or(&[]);
                let p = eval::predict(
                    &trained.selector,
                    &trained.feature_norm,
                    &[(e, r.features())],
                )?;
                let at = |v: &[Vec<f32>], j: usize| {
                    v.first()
                        .and_then(|row| row.get(j))
                        .copied()
                        .unwrap_or_default()
                };
                Ok(candidates
                    .iter()
                    .enumerate()
                    .map(|(j, model_id)| router_model::Prediction {
                        model_id: model_id.clone(),
                        quality: at(&p.quality, j),
                        latency_ms: at(&p.log_latency, j).exp(),
                        output_tokens: at(&p.log_tokens, j).exp(),
                    })
                    .collect())
            };
            let active_predict = |r: &LoggedRequest| -> Result<Vec<router_model::Prediction>> {
                let e = r.embedding.as_deref().unwrap_or(&[]);
                Ok(a.predict(e, &r.features())?)
            };
            match db::evaluate_policies(
                &held,
                &candidates,
                &new_predict,
                a.candidates(),
                &active_predict,
                db::RewardModel::ActiveHeads,
                opts.promote_margin,
            ) {
                Ok(report) => {
                    summary.push_str(&format!(
                        "\nOff-policy evaluation on {} held-out logged rows ({}):\n  new:    utility IPS {:.4}  DR {:.4}   quality IPS {:.4}  DR {:.4}   agrees with log {:.2}\n  active: utility IPS {:.4}  DR {:.4}   quality IPS {:.4}  DR {:.4}   agrees with log {:.2}\n  utility DR difference {:+.4} (95% lower bound {:+.4}, less {:.4} clipping could have added: {:+.4}, margin {:.3}; {} rows where the policies differ, the log served the new pick on {} and the active one on {}); IPS difference {:+.4} (lower bound {:+.4}); quality DR difference {:+.4}\n",
                        report.rows, report.estimator, report.new.utility_ips, report.new.utility_dr, report.new.ips, report.new.doubly_robust, report.new.agreement,
                        report.active.utility_ips, report.active.utility_dr, report.active.ips, report.active.doubly_robust, report.active.agreement,
                        report.dr_difference, report.dr_difference_lcb95, report.clip_bias_allowance, report.gate_lower_bound, report.margin,
                        report.disagreements, report.verified_new, report.verified_active, report.ips_difference, report.ips_difference_lcb95, report.quality_dr_difference
                    ));
                    Some(report)
                }
                Err(e) if !opts.promote => {
                    summary.push_str(&format!("\nOff-policy evaluation skipped: {e}\n"));
                    None
                }
                Err(e) => return Err(e),
            }
        }
        _ => None,
    };

    // The checkpoint.
    let all_rows: Vec<&Row> = train_rows.clone();
    let mut meta = CheckpointMeta::new(
        trained.architecture.clone(),
        candidates.clone(),
        trained.feature_norm.clone(),
        embedder_ref.clone(),
        {
            let mut hasher = blake3::Hasher::new();
            hasher.update(data::data_hash(all_rows.iter().copied()).as_bytes());
            for r in &log_train {
                hasher.update(r.id.as_bytes());
            }
            hasher.finalize().to_hex().to_string()
        },
    );
    let per_dataset: BTreeMap<String, serde_json::Value> = corpus
        .datasets
        .iter()
        .map(|d| {
            (
                d.kind.name().to_owned(),
                json!({"train": d.count(Split::Train), "test": d.count(Split::Test), "models": d.models.len(), "skipped": d.skipped}),
            )
        })
        .collect();
    meta.metrics.insert(
        "training".into(),
        json!({
            "seconds": trained.seconds,
            "embedding_seconds": embedding_seconds,
            "examples": examples.len(),
            "fit_examples": trained.fit_examples,
            "validation_examples": trained.validation_examples,
            "epochs_run": trained.history.len(),
            "best_epoch": trained.best_epoch,
            "history": trained.history,
            "config": opts.train,
            "datasets": per_dataset,
            "logged_rows": logged.len(),
            "notes": trained.notes,
        }),
    );
    if let Some(t) = &test {
        meta.metrics.insert("test".into(), serde_json::to_value(t)?);
    }
    if let Some(o) = &ope {
        meta.metrics.insert("ope".into(), serde_json::to_value(o)?);
    }

    // Leave-one-dataset-out.
    let mut lodo = Vec::new();
    if opts.lodo && corpus.datasets.len() > 1 {
        summary.push_str(
            "\nLeave-one-dataset-out (train without any question of X, test on X's test split):\n",
        );
        for held in &corpus.datasets {
            let row = lodo_fold(&corpus, held, &opts.train)?;
            lodo.push(row);
        }
        summary.push_str(&lodo_table(&lodo));
        meta.metrics
            .insert("lodo".into(), serde_json::to_value(&lodo)?);
    }

    Checkpoint::save(&opts.out, &trained.varmap, &meta)?;
    summary.push_str(&format!("\ncheckpoint written to {}\n", opts.out.display()));

    // Promotion.
    let mut promotion = None;
    if opts.promote {
        let active_dir = opts.active.clone().unwrap_or_default();
        let report = ope.clone().ok_or_else(|| {
            Error::InvalidInput("--promote needs held-out logged rows to evaluate on".into())
        })?;
        let promoted = report.better;
        let reason = if promoted {
            format!(
                "utility DR improvement {:+.4} has 95% lower bound {:+.4} > margin {:.3}",
                report.dr_difference, report.gate_lower_bound, report.margin
            )
        } else {
            format!("utility DR improvement {:+.4} has 95% lower bound {:+.4} ≤ margin {:.3}: keeping the active checkpoint", report.dr_difference, report.gate_lower_bound, report.margin)
        };
        if promoted {
            db::promote(&opts.out, &active_dir)?;
        }
        let record = db::PromotionRecord {
            decided_at: now_rfc3339(),
            candidate_checkpoint: opts.out.display().to_string(),
            active_checkpoint: active_dir.display().to_string(),
            promoted,
            reason: reason.clone(),
            ope: report,
        };
        let log = db::record_decision(&active_dir, &record)?;
        summary.push_str(&format!(
            "promotion: {} — {reason} (recorded in {})\n",
            if promoted { "PROMOTED" } else { "not promoted" },
            log.display()
        ));
        promotion = Some(record);
    }

    Ok(RunReport {
        checkpoint: opts.out.clone(),
        training_seconds: trained.seconds,
        embedding_seconds,
        test,
        lodo,
        ope,
        promotion,
        summary,
    })
}

/// One LODO fold.
fn lodo_fold(corpus: &Corpus, held: &Dataset, config: &TrainConfig) -> Result<LodoRow> {
    let held_keys: HashSet<String> = held.rows.iter().map(Row::key).collect();
    let train_rows: Vec<&Row> = corpus
        .datasets
        .iter()
        .filter(|d| d.kind != held.kind)
        .flat_map(|d| d.rows.iter())
        .filter(|r| r.split == Split::Train && !held_keys.contains(&r.key()))
        .collect();
    let candidates: Vec<String> = corpus
        .datasets
        .iter()
        .flat_map(|d| d.models.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let examples = examples_from_rows(corpus, &train_rows, &candidates)?;
    let trained = train::train(
        &examples,
        candidates.len(),
        &TrainConfig {
            progress: false,
            ..config.clone()
        },
        Init::Random,
    )?;
    let covered: Vec<usize> = (0..candidates.len())
        .filter(|&j| {
            held.models.contains(&candidates[j]) && examples.iter().any(|e| e.quality[j].is_some())
        })
        .collect();
    let test_rows: Vec<&Row> = held
        .rows
        .iter()
        .filter(|r| r.split == Split::Test)
        .collect();
    let inputs = test_rows
        .iter()
        .map(|r| corpus.input(r))
        .collect::<Result<Vec<_>>>()?;
    let pred = eval::predict(&trained.selector, &trained.feature_norm, &inputs)?;

    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    let (mut d_pred, mut d_true, mut neg_len) = (Vec::new(), Vec::new(), Vec::new());
    for (i, row) in test_rows.iter().enumerate() {
        for &j in &covered {
            if let Some(q) = row.quality(&candidates[j]) {
                scores.push(pred.quality[i][j]);
                labels.push(q >= 0.5);
            }
        }
        if let Some(m) = row.mean_quality() {
            d_pred.push(f64::from(pred.difficulty[i]));
            d_true.push(f64::from(m));
            neg_len.push(-(row.prompt.chars().count() as f64));
        }
    }

    // Strong/weak pair: the fixed pair where the dataset has it, else its best and worst model
    // by training-split mean quality.
    let (strong, weak) = if held.models.contains(eval::STRONG) && held.models.contains(eval::WEAK) {
        (eval::STRONG.to_owned(), eval::WEAK.to_owned())
    } else {
        let held_train: Vec<&Row> = held
            .rows
            .iter()
            .filter(|r| r.split == Split::Train)
            .collect();
        let mut means: Vec<(String, f64)> = held
            .models
            .iter()
            .map(|m| {
                let q: Vec<f64> = held_train
                    .iter()
                    .filter_map(|r| r.quality(m))
                    .map(f64::from)
                    .collect();
                (m.clone(), q.iter().sum::<f64>() / q.len().max(1) as f64)
            })
            .collect();
        means.sort_by(|a, b| b.1.total_cmp(&a.1));
        (
            means.first().map(|m| m.0.clone()).unwrap_or_default(),
            means.last().map(|m| m.0.clone()).unwrap_or_default(),
        )
    };
    let position = |m: &str| {
        candidates
            .iter()
            .position(|c| c == m)
            .filter(|j| covered.contains(j))
    };
    let (signal, router): (&str, Vec<f64>) = match (position(&strong), position(&weak)) {
        (Some(s), Some(w)) => (
            "quality-gap",
            pred.quality
                .iter()
                .map(|q| f64::from(q[s] - q[w]))
                .collect(),
        ),
        _ => (
            "difficulty",
            pred.difficulty
                .iter()
                .map(|d| 1.0 - f64::from(*d))
                .collect(),
        ),
    };
    Ok(LodoRow {
        held_out: held.kind.name().to_owned(),
        train_examples: examples.len(),
        test_prompts: test_rows.len(),
        difficulty_spearman: eval::spearman(&d_pred, &d_true),
        length_spearman: eval::spearman(&neg_len, &d_true),
        covered_quality_auc: eval::auc(&scores, &labels),
        covered_candidates: covered.iter().map(|&j| candidates[j].clone()).collect(),
        pair: eval::pair_report(
            held.kind.name(),
            &test_rows,
            &router,
            signal,
            &strong,
            &weak,
        ),
    })
}

fn lodo_table(rows: &[LodoRow]) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}"));
    let mut s = format!(
        "{:<11} {:>6} {:>5} {:>9} {:>8} {:>8} {:<52} {:>7} {:>7} {:>7}\n",
        "held out",
        "train",
        "test",
        "diff rho",
        "len rho",
        "cov AUC",
        "pair (router signal)",
        "APGR",
        "length",
        "random"
    );
    for r in rows {
        let (pair, apgr, len, rnd) = match &r.pair {
            Some(p) => (
                format!("{} vs {} ({})", p.strong, p.weak, p.router_signal),
                format!("{:.3}", p.router.apgr),
                format!("{:.3}", p.length_baseline.apgr),
                format!("{:.3}", p.random.apgr),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        s.push_str(&format!(
            "{:<11} {:>6} {:>5} {:>9} {:>8} {:>8} {:<52} {:>7} {:>7} {:>7}\n",
            r.held_out,
            r.train_examples,
            r.test_prompts,
            f(r.difficulty_spearman),
            f(r.length_spearman),
            f(r.covered_quality_auc),
            pair,
            apgr,
            len,
            rnd
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rated(embedding: Vec<f32>, head: usize, rating: f32) -> Example {
        let mut e = Example::empty(
            embedding,
            RequestFeatures::for_prompt("a question"),
            2,
            String::new(),
        );
        e.quality[head] = Some(rating);
        e
    }

    #[test]
    fn logged_ratings_become_the_local_success_rate_of_the_same_model() {
        // Twenty regions of four rows each for model 0 (80 rows: a neighbourhood of 4 is within
        // the local share); region r holds r % 5 successes, so each row's target is r % 5 / 4.
        let region = |r: usize| {
            (0..20)
                .map(|j| if j == r { 1.0 } else { 0.0 })
                .collect::<Vec<f32>>()
        };
        let mut examples = Vec::new();
        for r in 0..20 {
            for i in 0..4 {
                examples.push(rated(region(r), 0, if i < r % 5 { 1.0 } else { 0.0 }));
            }
        }
        // Model 1 answered two rows only: too few for a neighbourhood, its ratings stay.
        examples.push(rated(region(0), 1, 0.0));
        examples.push(rated(region(0), 1, 1.0));
        // k of 0 or 1 keeps every rating.
        let ratings = |examples: &[Example]| {
            examples
                .iter()
                .map(|e| e.quality.clone())
                .collect::<Vec<_>>()
        };
        let raw = ratings(&examples);
        smooth_log_ratings(&mut examples, 2, 1, 0.0).expect("smooths");
        assert_eq!(ratings(&examples), raw);
        // An own share of 1 keeps every rating too; one of a half averages each rating with
        // its neighbourhood's mean.
        smooth_log_ratings(&mut examples, 2, 4, 1.0).expect("smooths");
        assert_eq!(ratings(&examples), raw);
        let mut blended = examples.clone();
        smooth_log_ratings(&mut blended, 2, 4, 0.5).expect("smooths");
        for (i, (e, own)) in blended[..80].iter().zip(&raw).enumerate() {
            let own = own[0].expect("rated");
            let mean = (i / 4 % 5) as f32 / 4.0;
            assert_eq!(e.quality[0], Some(0.5 * own + 0.5 * mean), "row {i}");
        }
        smooth_log_ratings(&mut examples, 2, 4, 0.0).expect("smooths");
        for (i, e) in examples[..80].iter().enumerate() {
            assert_eq!(e.quality[0], Some((i / 4 % 5) as f32 / 4.0), "row {i}");
            assert_eq!(e.quality[1], None);
        }
        assert_eq!(
            (examples[80].quality[1], examples[81].quality[1]),
            (Some(0.0), Some(1.0))
        );
    }
}
