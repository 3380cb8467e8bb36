//! `switchyard eval learning` (a module of the binary, not of the gateway library): starts
//! the mock upstream replaying a dataset's recorded answers and a gateway on loopback, both
//! in-process, and hands them to `evals::learning`, which drives the loop over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use evals::learning::{self, LearnSetup, LoopPlan};
use gateway::mock::{self, MockOptions, ReplayStore};
use gateway::routing::{Exploration, Tradeoff};
use gateway::{Application, Config};
use router_model::policy::ExplorationPolicy;

#[derive(clap::Args)]
pub struct EvalLearningArgs {
    /// The dataset as KIND:PATH (routerbench: its train split is the traffic, its test split
    /// the measurement; the mock replays its answers).
    #[arg(long)]
    dataset: String,
    /// The checkpoint the gateway starts with (copied; the copy is what the loop replaces).
    #[arg(long)]
    start: PathBuf,
    /// A selector trained offline on the same training prompts with every label (the level
    /// the loop should approach); its test-split AIQ goes beside the loop's.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Candidate models (the route's), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "gpt-4-1106-preview,gpt-3.5-turbo-1106,mixtral-8x7b-instruct-v0.1")]
    candidates: Vec<String>,
    /// Rounds of serve → feedback → learn → reload → measure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The routes' trade-off (preset or quality=1,cost=0.05,latency=0).
    #[arg(long, default_value = "balanced")]
    tradeoff: String,
    /// Most share of training traffic explored.
    #[arg(long, default_value_t = 0.3)]
    exploration: f64,
    /// Softmax temperature of the exploring route.
    #[arg(long, default_value_t = 0.1)]
    temperature: f64,
    /// Explore ε-greedy instead of by softmax.
    #[arg(long)]
    epsilon_greedy: bool,
    /// Only this many training prompts (a seeded sample).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Only this many test prompts (a seeded sample).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rate each answer with the label of a random prompt for a random model: the feedback
    /// then says nothing about prompts or models, so no candidate deserves promotion (a
    /// control for the gate; use a quality-only trade-off, where cheaper is not better).
    #[arg(long)]
    shuffle_feedback: bool,
    /// Share of the exploring route's requests a challenger (a candidate the gate could not
    /// yet decide on) decides; 0: no challengers.
    #[arg(long, default_value_t = gateway::config::DEFAULT_CHALLENGER_SHARE)]
    challenger_share: f64,
    /// Send each round its own slice of the training prompts (the training split shuffled and
    /// cut into `--rounds` + 1 parts; the last is never sent, and every checkpoint is measured
    /// on it), so a challenger is judged on prompts it never trained on. The gateway's
    /// exploration draws are then seeded too, so a run repeats.
    #[arg(long)]
    fresh_prompts: bool,
    /// Rated rows the learn step needs.
    #[arg(long, default_value_t = 100)]
    min_rows: usize,
    /// The learn step's promotion margin: the lower bound of the utility gain must exceed it
    /// (negative: promote even a candidate estimated slightly worse).
    #[arg(long, default_value_t = 0.0)]
    promote_margin: f64,
    /// Judgements a promising challenger gets before it is retired (`switchyard learn
    /// --challenger-looks`).
    #[arg(long, default_value_t = training::learn::DEFAULT_CHALLENGER_LOOKS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(training::learn::MAX_CHALLENGER_LOOKS)))]
    challenger_looks: u32,
    /// Judge challengers on rows repeating a prompt they learned from too (`switchyard learn
    /// --judge-repeated-prompts`; without `--fresh-prompts` every round repeats the last one's
    /// prompts, so a challenger is never judged without it).
    #[arg(long)]
    judge_repeated_prompts: bool,
    /// The reward model of challengers' judgements (`switchyard learn --judge-reward-model`).
    #[arg(long, default_value = "nearest-rows")]
    judge_reward_model: training::learn::JudgeRewardModel,
    /// Seed of the prompt samples, the feedback shuffle, training and (with
    /// `--fresh-prompts`) the gateway's exploration draws.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Train each round's candidate from random weights rather than warm-started from the
    /// serving checkpoint.
    #[arg(long)]
    cold_start: bool,
    /// Epochs without a better validation loss before each round's training stops.
    #[arg(long)]
    patience: Option<usize>,
    /// Skip the offline AIQ of each checkpoint (it embeds the whole test split).
    #[arg(long)]
    skip_offline: bool,
    /// Scratch directory: the active checkpoint, its snapshots per round, the outcome log.
    #[arg(long)]
    work: PathBuf,
    /// Directory for learning.md, learning.json and learning_curve.svg.
    #[arg(long)]
    out: PathBuf,
    /// Embedder model directory (default: .cache/models/all-MiniLM-L6-v2).
    #[arg(long, env = "SWITCHYARD_EMBEDDER_DIR")]
    embedder_dir: Option<PathBuf>,
    /// Embedding cache directory.
    #[arg(long, env = "SWITCHYARD_EMBEDDING_CACHE", default_value = ".cache/embeddings")]
    cache_dir: PathBuf,
}

pub async fn run(a: EvalLearningArgs, command: String) -> anyhow::Result<()> {
    let spec: training::DatasetSpec = a.dataset.parse()?;
    let candidates: Vec<String> = a.candidates.iter().map(|c| router_model::canonical_model_id(c.trim())).collect();
    let prices = evals::prices::PriceTable::builtin()?;
    let prices = candidates
        .iter()
        .map(|c| prices.get(c).with_context(|| format!("no price for {c} in evals/prices.toml")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tradeoff = gateway::routing::parse_tradeoff(&a.tradeoff, Tradeoff::BALANCED)?;
    let exploration = if a.epsilon_greedy {
        Exploration::epsilon_greedy(a.exploration)
    } else {
        Exploration { policy: ExplorationPolicy::Softmax, ..Exploration::softmax(a.temperature, a.exploration) }
    };
    let plan = LoopPlan {
        candidates: candidates.clone(),
        prices,
        tradeoff,
        exploration,
        rounds: a.rounds,
        concurrency: a.concurrency,
        shuffle_feedback: a.shuffle_feedback,
        challenger_share: a.challenger_share,
        fresh_prompts: a.fresh_prompts,
        seed: a.seed,
    };
    let dataset = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || training::data::load(&spec)).await??
    };
    let train = learning::prompts(&dataset, training::Split::Train, &candidates, a.train_limit, a.seed);
    let test = learning::prompts(&dataset, training::Split::Test, &candidates, a.test_limit, a.seed ^ 1);
    anyhow::ensure!(!train.is_empty() && !test.is_empty(), "{}: no prompts labelled for every candidate", spec.path.display());

    // A fresh scratch directory: the loop replaces the active checkpoint and fills the log.
    let work = std::path::absolute(&a.work)?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let active = work.join("active");
    learning::snapshot(&a.start, &active)?;
    let database = work.join("log.db");
    let embedder_dir = a.embedder_dir.clone().or_else(|| Some(router_model::default_model_dir())).map(|d| std::path::absolute(&d).unwrap_or(d));

    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let store = ReplayStore::load(&spec.path)?;
    let mock_addr = mock::spawn(loopback, MockOptions { replay: Some(store), ..MockOptions::default() }).await?;
    let toml = plan.gateway_config(mock_addr, &database, &active, embedder_dir.as_deref());
    let config = Config::from_toml(&toml).context("generated learning-loop config")?;
    let app = Application::build(&config, Some(loopback)).await?;
    let addr = app.addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let setup = LearnSetup {
        database_url: format!("sqlite://{}", database.display()),
        active: active.clone(),
        embedder_dir: embedder_dir.clone(),
        cache_dir: a.cache_dir.clone(),
        min_rows: a.min_rows,
        promote_margin: a.promote_margin,
        challenger_looks: a.challenger_looks,
        judge_repeated_prompts: a.judge_repeated_prompts,
        judge_reward_model: a.judge_reward_model,
        cold_start: a.cold_start,
        patience: a.patience,
        snapshots: Some(work.clone()),
    };
    let report = learning::run_loop(addr, &plan, &setup, &train, &test, spec.kind.name()).await;
    let _ = stop.send(());
    served.await??;
    let report = report?;

    // AIQ of every checkpoint the loop served, offline on the same test split, beside the
    // reference trained offline with every label.
    let mut aiq_rows = Vec::new();
    let mut extra_rows = String::new();
    let snapshots: Vec<(String, PathBuf)> = std::iter::once(("start".to_owned(), a.start.clone()))
        .chain(report.rounds.iter().flat_map(|r| {
            [
                (format!("round {}", r.round), work.join(format!("round-{}", r.round))),
                (format!("round {} challenger (not serving the test)", r.round), work.join(format!("round-{}-challenger", r.round))),
            ]
        }))
        .chain(a.reference.iter().map(|r| ("offline reference (every label)".to_owned(), r.clone())))
        .collect();
    for (name, dir) in snapshots.iter().filter(|_| !a.skip_offline) {
        if !dir.join(router_model::checkpoint::META_FILE).is_file() {
            continue;
        }
        let model = evals::ModelOptions { checkpoint: dir.clone(), embedder_dir: embedder_dir.clone(), prices: None };
        let (spec, cache_dir, candidates) = (spec.clone(), a.cache_dir.clone(), candidates.clone());
        let (aiq, quality, cost) =
            tokio::task::spawn_blocking(move || evals::learning::test_aiq(&model, &spec, &candidates, tradeoff, &cache_dir)).await??;
        aiq_rows.push(serde_json::json!({"checkpoint": name, "aiq": aiq, "quality": quality, "cost_per_1k": cost}));
        extra_rows.push_str(&format!("| {name} | {aiq:.4} | {quality:.4} | {cost:.4} |\n"));
    }
    let extra = format!(
        "\n## Offline on the same test prompts\n\nAIQ: area under the quality–cost curve of the offline sweep over cost weights \
         (`switchyard eval routing`). Quality and cost: the offline choice at `{}`.\n\n| checkpoint | AIQ | quality | USD / 1k |\n|---|---|---|---|\n{extra_rows}",
        report.tradeoff
    );

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::fs::write(a.out.join("learning.md"), report.markdown(&command, &extra))?;
    std::fs::write(
        a.out.join("learning.json"),
        serde_json::to_vec_pretty(&serde_json::json!({"loop": report, "aiq": aiq_rows}))?,
    )?;
    // The curve is the route's objective (what learning optimises): utility at the trade-off,
    // beside the best single model's and the offline reference's, on the same test prompts.
    let mut curve = vec![(0.0, report.start.utility)];
    curve.extend(report.rounds.iter().map(|r| (r.round as f64, r.test.utility)));
    let mut references: Vec<(String, f64)> = report
        .singles
        .iter()
        .map(|(m, q, c)| (format!("always {m}"), tradeoff.utility(*q, c / 1e3, 0.0)))
        .collect();
    references.sort_by(|a, b| b.1.total_cmp(&a.1));
    references.truncate(1);
    for row in &aiq_rows {
        if row["checkpoint"].as_str().is_some_and(|n| n.starts_with("offline reference")) {
            if let (Some(q), Some(c)) = (row["quality"].as_f64(), row["cost_per_1k"].as_f64()) {
                references.push(("offline reference, every label".into(), tradeoff.utility(q, c / 1e3, 0.0)));
            }
        }
    }
    evals::plots::learning_curve(
        &a.out.join("learning_curve.svg"),
        &format!("{}: learning from the gateway's own traffic ({})", report.dataset, a.tradeoff),
        &curve,
        &references,
    )?;
    println!("report written to {}", a.out.join("learning.md").display());
    Ok(())
}
