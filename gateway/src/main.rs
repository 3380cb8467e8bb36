//! The `switchyard` binary: a thin CLI over the `gateway` library.

mod eval_learning;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::LogFormat;
use gateway::mock::{self, Fault, MockOptions, ReplayStore};
use gateway::store::keys::{create_key, update_key, KeyUpdate, ModelAllowList, NewKey};
use gateway::store::{LogStore, Store};
use gateway::{Application, Config};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible LLM gateway that learns where to send each request"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; without one, a built-in demo config with an in-process mock upstream.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `[server] listen`).
        #[arg(long, env = "SWITCHYARD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Outcome log database (overrides `[database] url`).
        #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Apply database migrations (`serve` also applies them at start).
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Manage virtual keys.
    Keys {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the OpenAI-compatible mock upstream used by tests, benchmarks and demos.
    MockUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Answer known prompts with recorded answers from a dataset folder
        /// (RouterBench CSVs or an Arena-Hard folder; searched one level deep).
        #[arg(long)]
        replay: Vec<PathBuf>,
        /// Delay before the first token, in ms.
        #[arg(long, default_value_t = 0)]
        first_token_ms: u64,
        /// Delay between tokens of a stream, in ms.
        #[arg(long, default_value_t = 0)]
        per_token_ms: u64,
        /// Fault for every request to a model: `MODEL=500`, `MODEL=429:5`, `MODEL=hang`, `MODEL=reset`.
        #[arg(long = "fault")]
        faults: Vec<String>,
    },
    /// Train a selector checkpoint from routing datasets and/or the outcome log.
    Train(Box<TrainArgs>),
    /// Rate logged answers with a judge model (`[judge] model`): feedback with source `judge`
    /// for answered requests whose prompt and answer the log kept (`store_prompts = true`).
    Judge {
        /// Gateway config: its `[database]`, `[providers]`, `[models]` and `[judge]`.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: PathBuf,
        /// The judge (a configured model); overrides `[judge] model`.
        #[arg(long)]
        model: Option<String>,
        /// Rate at most this many answers (the newest unrated first).
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
    /// Learn from the gateway's own traffic: when the outcome log has new rows or feedback,
    /// train a candidate warm-started from the serving checkpoint, evaluate both off-policy
    /// and promote the candidate only if it is significantly better. Safe to run on a schedule.
    Learn(Box<LearnArgs>),
    /// Evaluate a selector checkpoint: reports against baselines, batch scores, replay.
    Eval(EvalArgs),
}

/// `switchyard eval`: parsed here, done by the `evals` crate (the replay's gateway is
/// started here, the one place that links both).
#[derive(clap::Args)]
struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Quality–cost curves, AIQ, APGR/CPT, calibration and decision latency on a split, as
    /// report.md + SVGs + summary.json.
    Routing(Box<EvalRoutingArgs>),
    /// The selector's quality, cost and latency predictions for a JSONL file of prompts.
    Score(Box<EvalScoreArgs>),
    /// Send a split's prompts through a running gateway (mock upstream in replay mode) and
    /// compare what it served with the offline choice.
    Replay(Box<EvalReplayArgs>),
    /// Precision/recall of semantic-cache hits (verifier or plain cosine) on labelled pairs.
    Cache(Box<EvalCacheArgs>),
    /// The learning loop end to end: a gateway starting from a weak checkpoint serves a
    /// dataset's training prompts with exploration, gets each answer's label as feedback,
    /// learns, reloads, and is measured on the test prompts; repeated for some rounds.
    Learning(Box<eval_learning::EvalLearningArgs>),
    /// Leave one task family out: for each family (science QA, code, Winogrande, maths,
    /// chat), train a fresh selector without any of its prompts and score it on them beside
    /// kNN, clusters, prompt length, a random mix and the best single model.
    Lodo(Box<EvalLodoArgs>),
}

#[derive(clap::Args)]
struct EvalLodoArgs {
    /// A dataset as KIND:PATH (routerbench, arena-hard, llmrouter, routerdc); repeatable.
    #[arg(long = "dataset", required = true)]
    datasets: Vec<String>,
    /// Hold out only this family (science-qa, code, winogrande, maths, chat, llmrouter-qa);
    /// repeatable; default: every family.
    #[arg(long = "family")]
    families: Vec<String>,
    /// Directory for report.md and summary.json.
    #[arg(long, default_value = "evals/reports/lodo")]
    out: PathBuf,
    /// Seed of each fold's training run.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Embedder model directory (default: .cache/models/all-MiniLM-L6-v2).
    #[arg(long, env = "SWITCHYARD_EMBEDDER_DIR")]
    embedder_dir: Option<PathBuf>,
    /// Price table (TOML); default: the shipped evals/prices.toml.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Embedding cache directory.
    #[arg(
        long,
        env = "SWITCHYARD_EMBEDDING_CACHE",
        default_value = ".cache/embeddings"
    )]
    cache_dir: PathBuf,
    /// Each fold's selector, reused by the next run while its training data and
    /// configuration are unchanged.
    #[arg(long, default_value = ".cache/lodo")]
    folds_dir: PathBuf,
}

/// The checkpoint and what turns its predictions into choices.
#[derive(clap::Args)]
struct EvalModelArgs {
    /// Selector checkpoint directory.
    #[arg(long, default_value = "models/selector/default")]
    checkpoint: PathBuf,
    /// Embedder model directory (default: .cache/models/all-MiniLM-L6-v2).
    #[arg(long, env = "SWITCHYARD_EMBEDDER_DIR")]
    embedder_dir: Option<PathBuf>,
    /// Price table (TOML, `[models."id"] input_usd_per_mtok, output_usd_per_mtok`);
    /// default: the shipped evals/prices.toml.
    #[arg(long)]
    prices: Option<PathBuf>,
}

impl EvalModelArgs {
    fn options(&self) -> evals::ModelOptions {
        evals::ModelOptions {
            checkpoint: self.checkpoint.clone(),
            embedder_dir: self.embedder_dir.clone(),
            prices: self.prices.clone(),
        }
    }
}

#[derive(clap::Args)]
struct EvalRoutingArgs {
    #[command(flatten)]
    model: EvalModelArgs,
    /// A dataset as KIND:PATH (routerbench, arena-hard, llmrouter, routerdc); repeatable.
    #[arg(long = "dataset", required = true)]
    datasets: Vec<String>,
    /// The split to report on: `test` (held out from training), `validation` or `train`.
    #[arg(long, default_value = "test")]
    split: String,
    /// Directory for report.md, the SVGs and summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Strong model of the APGR/CPT pair.
    #[arg(long, default_value = evals::report::STRONG)]
    strong: String,
    /// Weak model of the APGR/CPT pair.
    #[arg(long, default_value = evals::report::WEAK)]
    weak: String,
    /// Prompts per dataset timed for decision latency (0: skip).
    #[arg(long, default_value_t = 200)]
    latency_prompts: usize,
    /// Embedding cache directory.
    #[arg(
        long,
        env = "SWITCHYARD_EMBEDDING_CACHE",
        default_value = ".cache/embeddings"
    )]
    cache_dir: PathBuf,
}

#[derive(clap::Args)]
struct EvalScoreArgs {
    #[command(flatten)]
    model: EvalModelArgs,
    /// JSON lines `{"id": ..., "prompt": "..."}`.
    #[arg(long)]
    input: PathBuf,
    /// JSON lines `{"id", "quality": {model: p}, "cost": {model: usd}, "latency_ms": {model: ms}}`.
    #[arg(long)]
    output: PathBuf,
    /// Comma-separated candidate ids (default: every checkpoint candidate with a price).
    #[arg(long, value_delimiter = ',')]
    candidates: Option<Vec<String>>,
}

#[derive(clap::Args)]
struct EvalReplayArgs {
    #[command(flatten)]
    model: EvalModelArgs,
    /// The dataset as KIND:PATH (routerbench or arena-hard: the mock replays their answers).
    #[arg(long)]
    dataset: String,
    /// The split whose prompts are sent: `test`, `validation` or `train`.
    #[arg(long, default_value = "test")]
    split: String,
    /// Only the first N prompts of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// The route's trade-off: a preset (best, balanced, cheap, fast) or quality=1,cost=0.05,latency=0.
    #[arg(long, default_value = "balanced")]
    tradeoff: String,
    /// Directory for replay.md and replay.json.
    #[arg(long)]
    out: PathBuf,
    /// Embedding cache directory.
    #[arg(
        long,
        env = "SWITCHYARD_EMBEDDING_CACHE",
        default_value = ".cache/embeddings"
    )]
    cache_dir: PathBuf,
}

fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "switchyard".into();
    }
    args.join(" ")
}

async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    match args.command {
        EvalCommand::Routing(a) => {
            let options = evals::RoutingOptions {
                model: a.model.options(),
                datasets: a
                    .datasets
                    .iter()
                    .map(|d| d.parse())
                    .collect::<Result<_, _>>()?,
                split: evals::parse_split(&a.split)?,
                out: a.out.clone(),
                strong: a.strong.clone(),
                weak: a.weak.clone(),
                cache_dir: a.cache_dir.clone(),
                latency_prompts: a.latency_prompts,
                command: command_line(),
            };
            let summary =
                tokio::task::spawn_blocking(move || evals::run_routing(&options)).await??;
            for d in &summary.datasets {
                println!(
                    "{}: {} prompts, AIQ router {:.4} oracle {:.4} best single {:.4} random mix {:.4}",
                    d.dataset, d.prompts, d.aiq.router, d.aiq.oracle, d.aiq.best_single, d.aiq.random_mix
                );
                if let Some(p) = &d.pair {
                    println!(
                        "  APGR router {:.3} length {:.3} random {:.3} oracle {:.3}",
                        p.report.router.apgr,
                        p.report.length_baseline.apgr,
                        p.report.random.apgr,
                        p.oracle_apgr
                    );
                }
            }
            println!("report: {}", a.out.join("report.md").display());
        }
        EvalCommand::Score(a) => {
            let options = evals::ScoreOptions {
                model: a.model.options(),
                input: a.input.clone(),
                output: a.output.clone(),
                candidates: a.candidates.clone(),
            };
            let n = tokio::task::spawn_blocking(move || evals::run_score(&options)).await??;
            println!("scored {n} prompts into {}", a.output.display());
        }
        EvalCommand::Replay(a) => eval_replay(*a).await?,
        EvalCommand::Lodo(a) => {
            let options = evals::lodo::LodoOptions {
                datasets: a
                    .datasets
                    .iter()
                    .map(|d| d.parse())
                    .collect::<Result<_, _>>()?,
                embedder_dir: a.embedder_dir.clone(),
                prices: a.prices.clone(),
                cache_dir: a.cache_dir.clone(),
                folds_dir: a.folds_dir.clone(),
                out: a.out.clone(),
                train: training::TrainConfig {
                    seed: a.seed,
                    ..training::TrainConfig::default()
                },
                families: a.families.clone(),
                command: command_line(),
            };
            let summary =
                tokio::task::spawn_blocking(move || evals::lodo::run_lodo(&options)).await??;
            for f in &summary.folds {
                println!(
                    "{:<12} {:<12} {:>5} prompts  selector − best baseline ({}) {:+.4} [{:+.4}, {:+.4}]  ensemble {:+.4}",
                    f.family, f.dataset, f.test_prompts, f.best_baseline, f.selector_minus_best_baseline.value,
                    f.selector_minus_best_baseline.lo95, f.selector_minus_best_baseline.hi95, f.ensemble_minus_best_baseline.value
                );
            }
            println!("report: {}", a.out.join("report.md").display());
        }
        EvalCommand::Cache(a) => tokio::task::spawn_blocking(move || run_eval_cache(*a)).await??,
        EvalCommand::Learning(a) => eval_learning::run(*a, command_line()).await?,
    }
    Ok(())
}

/// Starts the mock upstream (replaying the dataset's answers) and a gateway over the
/// checkpoint's candidates, both in-process on loopback port 0, and drives it.
async fn eval_replay(a: EvalReplayArgs) -> anyhow::Result<()> {
    let dataset: training::DatasetSpec = a.dataset.parse()?;
    let split = evals::parse_split(&a.split)?;
    let tradeoff =
        gateway::routing::parse_tradeoff(&a.tradeoff, gateway::routing::Tradeoff::BALANCED)?;
    let model = a.model.options();
    let (spec, limit, cache_dir) = (dataset.clone(), a.limit, a.cache_dir.clone());
    let setup = tokio::task::spawn_blocking(move || {
        evals::prepare_replay(&model, &spec, split, limit, tradeoff, &cache_dir)
    })
    .await??;

    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let store = ReplayStore::load(&dataset.path)?;
    let mock_addr = mock::spawn(
        loopback,
        MockOptions {
            replay: Some(store),
            ..MockOptions::default()
        },
    )
    .await?;
    let toml = setup.plan.gateway_config(
        &setup.set,
        mock_addr,
        &setup.checkpoint,
        setup.embedder_dir.as_deref(),
    );
    let config = Config::from_toml(&toml).context("generated replay config")?;
    let app = Application::build(&config, Some(loopback)).await?;
    let addr = app.addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let answers = evals::replay::drive(addr, &setup.set).await;
    let _ = stop.send(());
    served.await??;
    let report = evals::replay::compare(&setup.set, &setup.plan, &answers?)?;

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::fs::write(a.out.join("replay.md"), report.markdown(&command_line()))?;
    std::fs::write(
        a.out.join("replay.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    println!(
        "{} prompts: served = offline on {:.1}%; quality offline {:.4} served {:.4}; USD/1k offline {:.4} served {:.4}",
        report.prompts,
        report.agreement * 100.0,
        report.offline.quality,
        report.served.quality,
        report.offline.cost * 1e3,
        report.served.cost * 1e3
    );
    Ok(())
}

/// `switchyard eval cache`: precision/recall of semantic-cache hits on labelled pairs.
#[derive(clap::Args)]
struct EvalCacheArgs {
    /// JSONL of {"text_a", "text_b", "label"} pairs (label 1 = same question).
    #[arg(long)]
    pairs: PathBuf,
    /// Write {"i": line_index, "sim": score} per pair here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write a precision-recall SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Verifier checkpoint directory.
    #[arg(
        long,
        env = "SWITCHYARD_VERIFIER_DIR",
        default_value = "models/verifier/default"
    )]
    verifier: PathBuf,
    /// Score with plain cosine only (no verifier).
    #[arg(long)]
    no_verifier: bool,
    /// Embedder model directory (default: .cache/models/all-MiniLM-L6-v2).
    #[arg(long, env = "SWITCHYARD_EMBEDDER_DIR")]
    embedder_dir: Option<PathBuf>,
    /// Read at most this many pairs.
    #[arg(long)]
    limit: Option<usize>,
}

fn run_eval_cache(args: EvalCacheArgs) -> anyhow::Result<()> {
    use cache::verifier::{eval_cache, EvalCacheOptions};
    let report = eval_cache(&EvalCacheOptions {
        pairs: args.pairs,
        output: args.output,
        plot: args.plot,
        verifier_dir: (!args.no_verifier).then_some(args.verifier),
        embedder_dir: args.embedder_dir,
        limit: args.limit,
    })?;
    println!(
        "{} pairs ({} duplicates), score = {}",
        report.pairs, report.positives, report.score_kind
    );
    println!("threshold  precision  recall     f1  |  cosine: precision  recall     f1");
    for (v, c) in report.curve.iter().zip(&report.cosine_curve).step_by(5) {
        println!(
            "{:9.2}  {:9.3}  {:6.3}  {:5.3}  |          {:9.3}  {:6.3}  {:5.3}",
            v.threshold, v.precision, v.recall, v.f1, c.precision, c.recall, c.f1
        );
    }
    if let Some(p) = report.operating_point {
        println!(
            "verifier at its shipped threshold {:.3}: precision {:.3} recall {:.3} f1 {:.3} ({} hits, {} wrong)",
            p.threshold, p.precision, p.recall, p.f1, p.true_pos + p.false_pos, p.false_pos
        );
    }
    Ok(())
}

/// `switchyard train`: parsed here, done by the `training` crate.
#[derive(clap::Args)]
struct TrainArgs {
    /// A dataset as KIND:PATH (routerbench, arena-hard, llmrouter, routerdc); repeatable.
    #[arg(long = "dataset")]
    datasets: Vec<String>,
    /// Learn from the outcome log (`sqlite://FILE` or `postgres://…`) joined with feedback.
    #[arg(long, env = "SWITCHYARD_TRAIN_DATABASE_URL")]
    from_db: Option<String>,
    /// Only logged requests from this RFC 3339 time on.
    #[arg(long)]
    since: Option<String>,
    /// Directory the new checkpoint is written to.
    #[arg(long)]
    out: PathBuf,
    /// Candidates to train heads for: `all`, or a comma-separated list of model ids.
    #[arg(long, default_value = "all")]
    candidates: String,
    /// Maximum epochs (early stopping usually ends sooner).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Seed of initialisation, shuffling, dropout and the validation split.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Width of the hidden layer(s), comma-separated.
    #[arg(long, default_value = "256")]
    hidden: String,
    /// Also run leave-one-dataset-out evaluation.
    #[arg(long)]
    lodo: bool,
    /// The serving checkpoint: baseline for off-policy evaluation, start of log-only training.
    #[arg(long, env = "SWITCHYARD_ACTIVE_CHECKPOINT")]
    active: Option<PathBuf>,
    /// Replace --active with the new checkpoint if off-policy evaluation says it is better.
    #[arg(long)]
    promote: bool,
    /// Improvement (0..1 quality) the 95% lower bound must clear to promote.
    #[arg(long, default_value_t = 0.01)]
    promote_margin: f64,
    /// Embedder model directory (default: .cache/models/all-MiniLM-L6-v2).
    #[arg(long, env = "SWITCHYARD_EMBEDDER_DIR")]
    embedder_dir: Option<PathBuf>,
    /// Embedding cache directory.
    #[arg(
        long,
        env = "SWITCHYARD_EMBEDDING_CACHE",
        default_value = ".cache/embeddings"
    )]
    cache_dir: PathBuf,
    /// Also write the full report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl TrainArgs {
    fn options(&self) -> anyhow::Result<training::TrainOptions> {
        let mut options = training::TrainOptions::new(self.out.clone());
        options.datasets = self
            .datasets
            .iter()
            .map(|d| d.parse())
            .collect::<Result<_, _>>()?;
        options.from_db = self.from_db.clone();
        options.since = self.since.clone();
        options.candidates = self.candidates.parse()?;
        options.train.max_epochs = self.epochs;
        options.train.seed = self.seed;
        options.train.hidden_dims = self
            .hidden
            .split(',')
            .map(|w| w.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .context("--hidden wants widths like 256 or 256,128")?;
        options.lodo = self.lodo;
        options.active = self.active.clone();
        options.promote = self.promote;
        options.promote_margin = self.promote_margin;
        options.embedder_dir = self.embedder_dir.clone();
        options.cache_dir = self.cache_dir.clone();
        Ok(options)
    }
}

/// `switchyard learn`: parsed here, done by `training::learn`.
#[derive(clap::Args)]
struct LearnArgs {
    /// Outcome log (`sqlite://FILE` or `postgres://…`); default: `[database] url` of --config.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    database_url: Option<String>,
    /// Gateway config whose `[database] url` and `[router] checkpoint` to use.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The serving checkpoint (default: `[router] checkpoint` of --config, else models/selector/default).
    #[arg(long, env = "SWITCHYARD_ACTIVE_CHECKPOINT")]
    active: Option<PathBuf>,
    /// Where the candidate checkpoint is written (default: `<active>.candidate`).
    #[arg(long)]
    candidate: Option<PathBuf>,
    /// Where a candidate the gate cannot yet decide on is installed as the challenger, which
    /// the gateway serves for `[router] challenger_share` of routed requests (default:
    /// `[router] challenger_checkpoint` of --config, else `<active>.challenger`).
    #[arg(long)]
    challenger: Option<PathBuf>,
    /// Never install or retire a challenger.
    #[arg(long)]
    no_challenger: bool,
    /// Judgements a promising challenger (estimate above the margin, bound not) gets, each on
    /// every row logged since it was trained, before it is retired; the bound widens with the
    /// number allowed so the chance of promoting a no-better one stays 5% (1 to 5).
    #[arg(long, default_value_t = training::learn::DEFAULT_CHALLENGER_LOOKS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(training::learn::MAX_CHALLENGER_LOOKS)))]
    challenger_looks: u32,
    /// Judge the challenger on requests repeating a prompt it learned from, too (by default
    /// they are left out: a challenger can be right on them by remembering their ratings).
    /// For traffic that sends the same prompts again and again with the cache off.
    #[arg(long)]
    judge_repeated_prompts: bool,
    /// What the challenger's judgement fills in for picks the log did not serve:
    /// `nearest-rows` (each model's mean outcome on the 40 nearest requests it served before
    /// the challenger was trained) or `active-heads` (the serving checkpoint's predictions).
    #[arg(long, default_value = "nearest-rows")]
    judge_reward_model: training::learn::JudgeRewardModel,
    /// Only logged requests from this RFC 3339 time on.
    #[arg(long)]
    since: Option<String>,
    /// Learn only from requests to this route (repeatable; default: every row).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// Rated rows needed before a candidate is trained.
    #[arg(long, default_value_t = training::learn::DEFAULT_MIN_ROWS)]
    min_rows: usize,
    /// Improvement (0..1 quality) the 95% lower bound of the DR difference, less what clipping
    /// could have added, must clear.
    #[arg(long, default_value_t = 0.0)]
    promote_margin: f64,
    /// Learning rate of the fine-tuning.
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Train and evaluate, never promote.
    #[arg(long)]
    dry_run: bool,
    /// Run even if nothing changed since the last run.
    #[arg(long)]
    force: bool,
    /// Maximum epochs (early stopping usually ends sooner).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Seed of shuffling, dropout and the validation split.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Each rated row's quality target is the mean rating of this many nearest rows the same
    /// model answered (0 or 1: the row's own rating).
    #[arg(long, default_value_t = training::train::DEFAULT_LOG_LABEL_NEIGHBOURS)]
    label_neighbours: usize,
    /// The share of each rated row's quality target that is its own rating, the rest being
    /// its neighbours' mean (0: the mean alone; 1: raw ratings).
    #[arg(long, default_value_t = training::train::DEFAULT_LOG_LABEL_OWN_SHARE)]
    label_own_share: f32,
    /// Train on the mean of two fits' predictions, one on raw ratings and one on the
    /// neighbourhood targets (true), or on the neighbourhood targets themselves (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    label_two_fits: bool,
    /// Embedder model directory (default: .cache/models/all-MiniLM-L6-v2).
    #[arg(long, env = "SWITCHYARD_EMBEDDER_DIR")]
    embedder_dir: Option<PathBuf>,
    /// Embedding cache directory.
    #[arg(
        long,
        env = "SWITCHYARD_EMBEDDING_CACHE",
        default_value = ".cache/embeddings"
    )]
    cache_dir: PathBuf,
    /// Also write the training and off-policy report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl LearnArgs {
    fn options(&self) -> anyhow::Result<training::learn::LearnOptions> {
        let config = self.config.as_deref().map(Config::from_file).transpose()?;
        let database_url = match (&self.database_url, &config) {
            (Some(url), _) => url.clone(),
            (None, Some(c)) => c.database.url.clone(),
            (None, None) => {
                anyhow::bail!("give --database-url (or --config with a [database] url)")
            }
        };
        let active = self
            .active
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.router.checkpoint.clone()))
            .unwrap_or_else(|| PathBuf::from("models/selector/default"));
        let mut options = training::learn::LearnOptions::new(database_url, active);
        options.candidate = self.candidate.clone();
        options.challenger = self.challenger.clone().or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.router.challenger_checkpoint.clone())
        });
        options.install_challenger = !self.no_challenger;
        options.challenger_looks = self.challenger_looks;
        options.judge_repeated_prompts = self.judge_repeated_prompts;
        options.judge_reward_model = self.judge_reward_model;
        options.since = self.since.clone();
        options.routes = self.routes.clone();
        options.min_rows = self.min_rows;
        options.train.learning_rate = self.learning_rate;
        options.promote_margin = self.promote_margin;
        options.dry_run = self.dry_run;
        options.force = self.force;
        options.train.max_epochs = self.epochs;
        options.train.seed = self.seed;
        options.train.log_label_neighbours = self.label_neighbours;
        options.train.log_label_own_share = self.label_own_share;
        options.train.log_label_two_fits = self.label_two_fits;
        options.embedder_dir = self.embedder_dir.clone();
        options.cache_dir = self.cache_dir.clone();
        Ok(options)
    }
}

/// Which database a maintenance command talks to.
#[derive(clap::Args)]
struct DatabaseArgs {
    /// Config file whose `[database] url` to use.
    #[arg(long, env = "SWITCHYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Database URL (`sqlite://FILE` or `postgres://…`); overrides the config file.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL", global = true)]
    database_url: Option<String>,
}

impl DatabaseArgs {
    /// Opens and migrates the database.
    async fn open(&self) -> anyhow::Result<Store> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::builtin_default(),
        };
        if let Some(url) = &self.database_url {
            config.database.url = url.clone();
        }
        let store = Store::open(&config.database)?;
        store.migrate().await?;
        Ok(store)
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// The tenant the key belongs to: its rows, limits and feedback are scoped to it.
        #[arg(long)]
        tenant: String,
        /// A label for people (shown by `keys list`).
        #[arg(long)]
        name: Option<String>,
        /// Spend allowed, in USD.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Requests per minute allowed.
        #[arg(long)]
        rpm: Option<i64>,
        /// Tokens per minute allowed.
        #[arg(long)]
        tpm: Option<i64>,
        /// Models and routes the key may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
    },
    /// Change a key's limits or model allow-list; options left out stay as they are.
    Update {
        /// The key's id (from `keys create` or `keys list`).
        id: Uuid,
        /// Requests per minute allowed (`none` removes the limit).
        #[arg(long)]
        rpm: Option<String>,
        /// Tokens per minute allowed (`none` removes the limit).
        #[arg(long)]
        tpm: Option<String>,
        /// Spend allowed, in USD (`none` removes the limit).
        #[arg(long)]
        budget_usd: Option<String>,
        /// Models and routes the key may use, comma-separated (`all` removes the list).
        #[arg(long)]
        models: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Disable a key; requests with it fail within the key cache TTL.
    Revoke {
        /// The key's id (from `keys create` or `keys list`).
        id: Uuid,
    },
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists: candle's spinning elementwise pool would fight tokio for cores.
    router_model::runtime::configure_cpu_threads();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `serve` reads its config first: the log format and the trace exporter are set there.
    let serve_config = match &cli.command {
        Command::Serve {
            config: Some(path), ..
        } => Some(Config::from_file(path)?),
        _ => None,
    };
    let configured = serve_config
        .as_ref()
        .map_or(LogFormat::Text, |c| c.server.log_format);
    // Only `serve` exports traces; without a config file `OTEL_EXPORTER_OTLP_ENDPOINT` still works.
    let otlp = match (&cli.command, &serve_config) {
        (_, Some(config)) => config.telemetry.otlp(),
        (Command::Serve { .. }, None) => gateway::config::TelemetryConfig::default().otlp(),
        _ => None,
    };
    let telemetry = gateway::telemetry::init(LogFormat::from_env_or(configured)?, otlp)?;
    let outcome = run_command(cli, serve_config).await;
    telemetry.shutdown().await;
    outcome
}

async fn run_command(cli: Cli, serve_config: Option<Config>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config: _,
            listen,
            database_url,
        } => {
            let mut config = match serve_config {
                Some(config) => config,
                None => {
                    tracing::info!(
                        "no config file given: using the built-in demo config (mock upstream)"
                    );
                    Config::builtin_default()
                }
            };
            if let Some(url) = database_url {
                config.database.url = url;
            }
            let app = Application::build(&config, listen).await?;
            tracing::info!(addr = %app.addr(), "switchyard listening");
            app.run_until(shutdown_signal()).await?;
        }
        Command::MockUpstream {
            listen,
            replay,
            first_token_ms,
            per_token_ms,
            faults,
        } => {
            let mut options = MockOptions {
                first_token_ms,
                per_token_ms,
                ..MockOptions::default()
            };
            for spec in faults {
                let (model, fault) = spec.split_once('=').context("--fault wants MODEL=FAULT")?;
                let fault: Fault = fault.parse().map_err(anyhow::Error::msg)?;
                options.faults.insert(model.to_owned(), fault);
            }
            if !replay.is_empty() {
                let mut store = ReplayStore::default();
                for dir in &replay {
                    store.merge(ReplayStore::load(dir)?);
                }
                tracing::info!(prompts = store.len(), "replaying recorded answers");
                options.replay = Some(store);
            }
            let addr = mock::spawn(listen, options).await?;
            tracing::info!(%addr, "mock upstream listening");
            shutdown_signal().await;
        }
        Command::Train(args) => {
            let report = training::run(&args.options()?).await?;
            print!("{}", report.summary);
            if let Some(path) = &args.report {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Judge {
            config,
            model,
            limit,
        } => {
            let config = Config::from_file(&config)?;
            let report = gateway::judge::run(&config, model.as_deref(), limit).await?;
            println!(
                "judge: {} answers considered, {} rated, {} replies without a score, {} calls failed",
                report.considered, report.rated, report.unparsed, report.failed
            );
        }
        Command::Learn(args) => {
            let options = args.options()?;
            let outcome = training::learn::run(&options).await?;
            if let training::learn::LearnOutcome::Evaluated {
                candidate: Some(report),
                ..
            } = &outcome
            {
                print!("{}", report.summary);
                if let Some(path) = &args.report {
                    std::fs::write(path, serde_json::to_vec_pretty(report.as_ref())?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
            println!("learn: {}", outcome.describe());
        }
        Command::Eval(args) => eval(args).await?,
        Command::Migrate { db } => {
            let store = db.open().await?;
            println!("{} database is up to date", store.backend());
        }
        Command::Keys { db, command } => {
            let store = db.open().await?;
            match command {
                KeysCommand::Create {
                    tenant,
                    name,
                    budget_usd,
                    rpm,
                    tpm,
                    models,
                } => {
                    let models = ModelAllowList(models);
                    let (record, key) = create_key(
                        &store,
                        NewKey {
                            tenant,
                            name,
                            rpm,
                            tpm,
                            budget_usd,
                            models,
                        },
                    )
                    .await?;
                    println!("id:     {}", record.id);
                    println!("tenant: {}", record.tenant);
                    println!("key:    {key}");
                    eprintln!("Store the key now: it is not shown again.");
                }
                KeysCommand::Update {
                    id,
                    rpm,
                    tpm,
                    budget_usd,
                    models,
                } => {
                    let limit = |text: Option<String>| -> anyhow::Result<Option<Option<f64>>> {
                        text.map(|t| {
                            if t == "none" {
                                Ok(None)
                            } else {
                                t.parse::<f64>().map(Some).context("a number or `none`")
                            }
                        })
                        .transpose()
                    };
                    let whole = |value: Option<Option<f64>>| value.map(|v| v.map(|n| n as i64));
                    let change = KeyUpdate {
                        rpm: whole(limit(rpm)?),
                        tpm: whole(limit(tpm)?),
                        budget_usd: limit(budget_usd)?,
                        models: models.map(|m| {
                            (m != "all")
                                .then(|| m.split(',').map(|s| s.trim().to_owned()).collect())
                        }),
                    };
                    let record = update_key(&store, id, change)
                        .await?
                        .with_context(|| format!("no key with id {id}"))?;
                    println!("{}", serde_json::to_string_pretty(&record)?);
                }
                KeysCommand::List => {
                    println!(
                        "{:<36}  {:<16}  {:<16}  {:<8}  {:>8}  {:>10}  {:>10}  {:<25}  models",
                        "id", "tenant", "name", "enabled", "rpm", "tpm", "budget_usd", "created_at"
                    );
                    for key in store.list_keys().await? {
                        let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                        println!(
                            "{:<36}  {:<16}  {:<16}  {:<8}  {:>8}  {:>10}  {:>10}  {:<25}  {}",
                            key.id,
                            key.tenant,
                            show(key.name.clone()),
                            key.enabled,
                            show(key.rpm.map(|v| v.to_string())),
                            show(key.tpm.map(|v| v.to_string())),
                            show(key.budget_usd.map(|v| v.to_string())),
                            key.created_at.to_rfc3339(),
                            key.models
                                .0
                                .as_ref()
                                .map_or_else(|| "all".to_owned(), |m| m.join(",")),
                        );
                    }
                }
                KeysCommand::Revoke { id } => {
                    if !store.set_key_enabled(id, false).await? {
                        anyhow::bail!("no key with id {id}");
                    }
                    println!("revoked {id}");
                }
            }
            store.close().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every option says what it is for in `--help`.
    #[test]
    fn every_option_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help"
                    && id != "version"
                    && arg.get_help().is_none()
                    && arg.get_long_help().is_none()
                {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{name} (no about)"));
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "switchyard", &mut missing);
        assert!(
            missing.is_empty(),
            "no --help text for:\n{}",
            missing.join("\n")
        );
    }
}
