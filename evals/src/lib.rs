//! `switchyard eval`: how far to trust the router, measured on held-out prompts beside the
//! baselines a user would otherwise pick.
//!
//! - [`run_routing`]: quality–cost curves (router, single models, random mixes, prompt length,
//!   oracle) beside kNN and cluster routers fitted on the training prompts ([`baselines`], with
//!   bootstrap intervals), AIQ, APGR/CPT for a strong/weak pair, calibration and decision latency, as
//!   `report.md` + SVGs + `summary.json`.
//! - [`run_score`]: the selector's per-candidate predictions for a JSONL file of prompts.
//! - [`replay`]: the same prompts through a running gateway, against the offline choice.
//!
//! Datasets are read by the training crate's importers (canonical model ids, the datasets'
//! own splits), embeddings come from its on-disk cache, and every choice is made by
//! `router_model::policy`, the code the gateway serves with.

pub mod baselines;
pub mod error;
pub mod learning;
pub mod lodo;
pub mod metrics;
pub mod offline;
pub mod plots;
pub mod prices;
pub mod replay;
pub mod report;
pub mod score;

use std::path::{Path, PathBuf};

use router_model::policy::Tradeoff;
use router_model::{BertEmbedder, Checkpoint, Embedder, EmbedderOptions, ModelSource};
use training::embed_cache::EmbeddingCache;
use training::{DatasetSpec, Split};

pub use error::{Error, Result};
use offline::EvalSet;
use prices::PriceTable;
use report::{DatasetReport, LatencySummary, Summary};

/// Where the selector and its embedder come from.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub checkpoint: PathBuf,
    /// Default: `.cache/models/all-MiniLM-L6-v2` (see `router_model::default_model_dir`).
    pub embedder_dir: Option<PathBuf>,
    /// Default: the shipped `evals/prices.toml`.
    pub prices: Option<PathBuf>,
}

/// The embedder, the checkpoint (refused unless trained on that embedder) and the prices.
pub struct Loaded {
    pub embedder: BertEmbedder,
    pub checkpoint: Checkpoint,
    pub prices: PriceTable,
}

impl ModelOptions {
    pub fn load(&self) -> Result<Loaded> {
        let source = match &self.embedder_dir {
            Some(dir) => ModelSource::Dir(dir.clone()),
            None => ModelSource::default_dir(),
        };
        let embedder = BertEmbedder::load(&source, &EmbedderOptions::default())?;
        let checkpoint = Checkpoint::load(&self.checkpoint, embedder.id(), embedder.dim())?;
        let prices = PriceTable::load(self.prices.as_deref())?;
        Ok(Loaded {
            embedder,
            checkpoint,
            prices,
        })
    }
}

/// `--split train|test`.
pub fn parse_split(text: &str) -> Result<Split> {
    match text {
        "test" => Ok(Split::Test),
        "train" => Ok(Split::Train),
        other => Err(Error::InvalidInput(format!("--split is train or test, not `{other}`"))),
    }
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Test => "test",
        Split::Train => "train",
    }
}

/// Options of `switchyard eval routing`.
#[derive(Debug, Clone)]
pub struct RoutingOptions {
    pub model: ModelOptions,
    pub datasets: Vec<DatasetSpec>,
    pub split: Split,
    pub out: PathBuf,
    pub strong: String,
    pub weak: String,
    /// Embedding cache root (shared with `switchyard train`).
    pub cache_dir: PathBuf,
    /// Prompts timed for decision latency (per dataset; 0 skips it).
    pub latency_prompts: usize,
    /// The command line, quoted in the report.
    pub command: String,
}

/// Builds the evaluation set of every dataset (embedding through the cache).
pub fn eval_sets(loaded: &Loaded, datasets: &[DatasetSpec], split: Split, cache_dir: &Path, limit: Option<usize>) -> Result<Vec<EvalSet>> {
    let data = training::data::load_all(datasets)?;
    let mut cache = EmbeddingCache::open(cache_dir, loaded.embedder.id(), loaded.embedder.dim())?;
    let mut embed = offline::cached(&mut cache, &loaded.embedder);
    data.iter()
        .map(|d| EvalSet::build(d, split, &loaded.checkpoint, &loaded.prices, None, limit, &mut embed))
        .collect()
}

/// `switchyard eval routing`: writes `report.md`, one set of SVGs per dataset and
/// `summary.json` to `out`.
pub fn run_routing(options: &RoutingOptions) -> Result<Summary> {
    let loaded = options.model.load()?;
    let sets = eval_sets(&loaded, &options.datasets, options.split, &options.cache_dir, None)?;
    // The kNN and cluster baselines learn from the training prompts (a test-split report only).
    let train_sets = match options.split {
        Split::Test => Some(eval_sets(&loaded, &options.datasets, Split::Train, &options.cache_dir, None)?),
        Split::Train => None,
    };
    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(format!("creating {}", options.out.display()), e))?;
    let mut reports: Vec<DatasetReport> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let train = train_sets.as_ref().and_then(|t| t.get(i));
        let mut report = report::evaluate(set, &options.strong, &options.weak, split_name(options.split), train);
        if options.latency_prompts > 0 {
            let prompts: Vec<&str> = set.rows.iter().take(options.latency_prompts).map(|r| r.prompt.as_str()).collect();
            let ms = offline::decision_latency_ms(&loaded.embedder, &loaded.checkpoint, &set.route, &prompts, Tradeoff::BALANCED)?;
            report.latency = Some(LatencySummary {
                prompts: ms.len(),
                p50_ms: metrics::percentile(&ms, 0.5).unwrap_or(0.0),
                p99_ms: metrics::percentile(&ms, 0.99).unwrap_or(0.0),
                mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
                how: format!(
                    "embed one prompt (candle MiniLM, this process's threads) + selector + policy, first prompts of the split, sequential; \
                     {}, load average {} when measured",
                    machine(),
                    load_average()
                ),
            });
        }
        plots::quality_cost(&options.out.join(format!("{}-quality-cost.svg", set.dataset)), &report)?;
        if let Some(pair) = &report.pair {
            plots::pgr(&options.out.join(format!("{}-pgr.svg", set.dataset)), &set.dataset, pair)?;
        }
        plots::calibration(&options.out.join(format!("{}-calibration.svg", set.dataset)), &set.dataset, &report.calibration)?;
        reports.push(report);
    }
    let summary = Summary {
        checkpoint: options.model.checkpoint.display().to_string(),
        checkpoint_created_at: loaded.checkpoint.meta.created_at.clone(),
        command: options.command.clone(),
        datasets: reports,
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = options.out.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    write("report.md", report::markdown(&summary).as_bytes())?;
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::InvalidInput(e.to_string()))?;
    write("summary.json", &json)?;
    Ok(summary)
}

/// The CPU the figures came from (speed, and even float results, differ between machines).
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown CPU".to_owned(), |s| s.trim().to_owned());
    let avx512 = cpuinfo.split_whitespace().any(|flag| flag == "avx512f");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu} ({} AVX-512), {cores} cores", if avx512 { "with" } else { "without" })
}

/// The 1-minute load average (Linux), to say how busy the machine was when latency was timed.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Options of `switchyard eval score`.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    pub model: ModelOptions,
    pub input: PathBuf,
    pub output: PathBuf,
    pub candidates: Option<Vec<String>>,
}

/// `switchyard eval score`: returns the number of lines written.
pub fn run_score(options: &ScoreOptions) -> Result<usize> {
    // Read (and reject) the input before loading any model.
    let inputs = score::read_inputs(&options.input)?;
    let loaded = options.model.load()?;
    let (names, route) = score::candidates(&loaded.checkpoint, &loaded.prices, options.candidates.as_deref())?;
    let lines = score::score(&loaded.checkpoint, &loaded.embedder, &names, &route, &inputs)?;
    score::write_lines(&options.output, &lines)?;
    Ok(lines.len())
}

/// Everything `switchyard eval replay` needs before the gateway starts.
pub struct ReplaySetup {
    pub set: EvalSet,
    pub plan: replay::ReplayPlan,
    pub checkpoint: PathBuf,
    pub embedder_dir: Option<PathBuf>,
}

/// Loads the dataset's split (first `limit` prompts), and the offline choices at `tradeoff`.
pub fn prepare_replay(model: &ModelOptions, dataset: &DatasetSpec, split: Split, limit: Option<usize>, tradeoff: Tradeoff, cache_dir: &Path) -> Result<ReplaySetup> {
    let loaded = model.load()?;
    let mut sets = eval_sets(&loaded, std::slice::from_ref(dataset), split, cache_dir, limit)?;
    let set = sets.pop().ok_or_else(|| Error::InvalidInput("no dataset".into()))?;
    let plan = replay::ReplayPlan::new(&set, tradeoff);
    let checkpoint = std::path::absolute(&model.checkpoint).map_err(|e| Error::io("resolving the checkpoint path", e))?;
    let embedder_dir = model
        .embedder_dir
        .clone()
        .or_else(|| Some(router_model::default_model_dir()))
        .map(|d| std::path::absolute(&d).unwrap_or(d));
    Ok(ReplaySetup {
        set,
        plan,
        checkpoint,
        embedder_dir,
    })
}
