//! `switchyard eval learning`: the loop from served traffic to a better selector, measured
//! end to end over HTTP.
//!
//! A gateway (started by the binary, which links the gateway; this crate does not) serves two
//! routes over the same candidates and the same checkpoint: [`LEARN_ROUTE`] explores,
//! [`EVAL_ROUTE`] does not. Each round sends the training prompts through the exploring route,
//! rates every answer with the dataset's label for the model that answered
//! (`POST /v1/feedback`), runs the learn step ([`training::learn`]) against the gateway's
//! outcome log, asks the gateway to reload (`POST /admin/reload`), and sends the test prompts
//! through the non-exploring route. Realised quality and cost are the dataset's label and
//! recorded cost for the model named by `x-switchyard-model`: what users of that deployment
//! would have got.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use router_model::policy::{Exploration, ExplorationPolicy, Price, Tradeoff};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use training::learn::LearnOptions;
use training::{Dataset, Split};

use crate::error::{Error, Result};

/// The route that explores (training traffic).
pub const LEARN_ROUTE: &str = "learn";
/// The route that does not (measurement traffic).
pub const EVAL_ROUTE: &str = "eval";
/// A route with the gateway's default exploration, to measure what it costs users.
pub const DEFAULT_EXPLORATION_ROUTE: &str = "explore-default";

/// One prompt with every candidate's realised quality and cost.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub quality: Vec<f64>,
    pub cost: Vec<f64>,
}

/// The prompts of one split of `dataset` that have a label and a recorded cost for every
/// candidate (the first `limit`, after a seeded shuffle when `limit` is given, so a short run
/// still mixes the dataset's tasks).
pub fn prompts(dataset: &Dataset, split: Split, candidates: &[String], limit: Option<usize>, seed: u64) -> Vec<Prompt> {
    let mut out: Vec<Prompt> = dataset
        .rows
        .iter()
        .filter(|r| r.split == split)
        .filter_map(|r| {
            let mut quality = Vec::with_capacity(candidates.len());
            let mut cost = Vec::with_capacity(candidates.len());
            for c in candidates {
                let o = r.outcomes.get(c)?;
                quality.push(f64::from(o.quality?));
                cost.push(o.cost_usd?);
            }
            Some(Prompt { text: r.prompt.clone(), quality, cost })
        })
        .collect();
    if let Some(limit) = limit {
        out.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        out.truncate(limit);
    }
    out
}

/// What the loop is run with.
#[derive(Debug, Clone)]
pub struct LoopPlan {
    pub candidates: Vec<String>,
    pub prices: Vec<Price>,
    pub tradeoff: Tradeoff,
    /// The exploring route's exploration.
    pub exploration: Exploration,
    pub rounds: usize,
    /// Requests in flight at once (the embedder batches them).
    pub concurrency: usize,
    /// Rate each answer with the label of a random other prompt for the same model: feedback
    /// that keeps each model's average quality but says nothing about which prompt suits
    /// which model. A candidate fit to it has learned nothing about which prompt goes where;
    /// the gate should refuse it, and a promotion must never make the served routing worse.
    pub shuffle_feedback: bool,
    /// Share of the exploring route's requests a challenger (an undecided candidate) decides.
    pub challenger_share: f64,
    /// Send each round a disjoint slice of the training prompts instead of all of them, so a
    /// challenger is judged on prompts it was not trained on (replaying the same prompts
    /// makes the second stage's estimate an in-sample one). One more slice is never sent to
    /// the exploring route: every checkpoint is also measured on it, so an off-policy estimate
    /// made on the log can be held against a realised value on prompts of the same split.
    pub fresh_prompts: bool,
    pub seed: u64,
}

impl LoopPlan {
    /// The gateway's config: the outcome log in `database` (SQLite, prompts stored so that
    /// training sees the features serving saw), the response cache off (every request is a
    /// decision), a decision deadline no request misses, and the two routes.
    pub fn gateway_config(&self, mock: SocketAddr, database: &Path, checkpoint: &Path, embedder_dir: Option<&Path>) -> String {
        let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let mut toml = format!(
            "[database]\nurl = {}\nstore_prompts = true\nbatch_interval_ms = 20\n\n[cache]\nexact = false\nsemantic = false\n\n",
            quote(&format!("sqlite://{}", database.display()))
        );
        toml.push_str(&format!(
            "[router]\ncheckpoint = {}\ndecision_timeout_ms = 60000\nreload_poll_ms = 0\nchallenger_share = {:?}\n",
            quote(&checkpoint.to_string_lossy()),
            self.challenger_share
        ));
        if let Some(dir) = embedder_dir {
            toml.push_str(&format!("embedder_dir = {}\n", quote(&dir.to_string_lossy())));
        }
        if self.fresh_prompts {
            // Every prompt is sent once, so a draw keyed on the prompt is as good as a random
            // one and the run repeats. Replayed rounds would reuse each prompt's draw, tying a
            // challenger's judging traffic to the traffic it was trained on.
            toml.push_str(&format!("exploration_seed = {}\n", self.seed));
        }
        toml.push_str(&format!("\n[providers.replay]\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\n"));
        for (name, price) in self.candidates.iter().zip(&self.prices) {
            toml.push_str(&format!(
                "[models.{}]\nprovider = \"replay\"\ninput_usd_per_mtok = {:?}\noutput_usd_per_mtok = {:?}\n\n",
                quote(name),
                price.input_usd_per_mtok,
                price.output_usd_per_mtok
            ));
        }
        let list: Vec<String> = self.candidates.iter().map(|c| quote(c)).collect();
        let policy = match self.exploration.policy {
            ExplorationPolicy::Softmax => "softmax",
            ExplorationPolicy::EpsilonGreedy => "epsilon_greedy",
        };
        for (route, share) in [(LEARN_ROUTE, self.exploration.max_share), (EVAL_ROUTE, 0.0)] {
            toml.push_str(&format!(
                "[routes.{route}]\ncandidates = [{}]\ndefault = {}\ntradeoff = {}\nexploration = {share:?}\nexploration_policy = \"{policy}\"\nexploration_temperature = {:?}\n\n",
                list.join(", "),
                list[0],
                quote(&self.tradeoff.to_string()),
                self.exploration.temperature,
            ));
        }
        toml.push_str(&format!(
            "[routes.{DEFAULT_EXPLORATION_ROUTE}]\ncandidates = [{}]\ndefault = {}\ntradeoff = {}\n",
            list.join(", "),
            list[0],
            quote(&self.tradeoff.to_string()),
        ));
        toml
    }
}

/// One answer of the gateway.
#[derive(Debug, Clone)]
struct Answer {
    prompt: usize,
    request_id: String,
    candidate: usize,
    decision: String,
    /// What the gateway billed: the answer's usage at the model's configured price.
    cost_usd: f64,
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Replay(e.to_string()))
}

/// Sends every prompt to `route` (a route or a model), `concurrency` at a time.
async fn send_all(addr: SocketAddr, route: &str, prompts: &[Prompt], plan: &LoopPlan) -> Result<Vec<Answer>> {
    let candidates = &plan.candidates;
    // With fresh prompts (a seeded run) the exploring route's traffic goes one request at a
    // time, so the log's order — which rows are the newest, the ones the learn step holds out
    // — is the same in every run.
    let concurrency = if route == LEARN_ROUTE && plan.fresh_prompts { 1 } else { plan.concurrency };
    let client = client()?;
    let url = format!("http://{addr}/v1/chat/completions");
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in prompts.iter().enumerate() {
        let (client, url, gate, route) = (client.clone(), url.clone(), gate.clone(), route.to_owned());
        let body = json!({"model": route, "messages": [{"role": "user", "content": p.text}]});
        let (candidates, prices) = (candidates.to_vec(), plan.prices.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| Error::Replay(e.to_string()))?;
            let response = client.post(&url).json(&body).send().await.map_err(|e| Error::Replay(format!("prompt {i}: {e}")))?;
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let (status, model, id, decision) = (
                response.status(),
                header("x-switchyard-model"),
                header("x-switchyard-request-id"),
                header("x-switchyard-decision"),
            );
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Error::Replay(format!("prompt {i}: gateway answered {status}: {text}")));
            }
            let model = model.ok_or_else(|| Error::Replay(format!("prompt {i}: no x-switchyard-model header")))?;
            let candidate = candidates
                .iter()
                .position(|c| *c == model)
                .ok_or_else(|| Error::Replay(format!("prompt {i}: served `{model}`, not a candidate")))?;
            let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Replay(format!("prompt {i}: {e}")))?;
            let tokens = |field: &str| body["usage"][field].as_u64().ok_or_else(|| Error::Replay(format!("prompt {i}: no usage.{field}")));
            let cost_usd = prices[candidate].cost_usd(tokens("prompt_tokens")?, tokens("completion_tokens")?);
            Ok(Answer {
                prompt: i,
                request_id: id.ok_or_else(|| Error::Replay(format!("prompt {i}: no request id")))?,
                candidate,
                decision: decision.unwrap_or_default(),
                cost_usd,
            })
        });
    }
    let mut out = Vec::with_capacity(prompts.len());
    let bar = training::progress::bar(prompts.len(), route);
    while let Some(joined) = tasks.join_next().await {
        out.push(joined.map_err(|e| Error::Replay(e.to_string()))??);
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.sort_by_key(|a| a.prompt);
    Ok(out)
}

/// Rates each answer with `score(answer)`.
async fn send_feedback(addr: SocketAddr, answers: &[Answer], score: impl Fn(&Answer) -> f64, concurrency: usize) -> Result<()> {
    let client = client()?;
    let url = format!("http://{addr}/v1/feedback");
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for a in answers {
        let body = json!({"request_id": a.request_id, "score": score(a), "source": "eval"});
        let (client, url, gate) = (client.clone(), url.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| Error::Replay(e.to_string()))?;
            let response = client.post(&url).json(&body).send().await.map_err(|e| Error::Replay(e.to_string()))?;
            if !response.status().is_success() {
                let status = response.status();
                return Err(Error::Replay(format!("feedback answered {status}: {}", response.text().await.unwrap_or_default())));
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::Replay(e.to_string()))??;
    }
    Ok(())
}

/// Waits until the outcome log holds `rows` rows and `rated` rated ones (the gateway writes
/// off the request path), for at most a minute.
async fn wait_for_log(database_url: &str, rows: usize, rated: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let logged = training::db::load_logged_routes(database_url, None, &[LEARN_ROUTE.to_owned()]).await?;
        let have_rated = logged.iter().filter(|r| r.feedback.is_some()).count();
        if logged.len() >= rows && have_rated >= rated {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Error::Replay(format!(
                "the outcome log holds {} rows ({have_rated} rated) after a minute; expected {rows} ({rated} rated)",
                logged.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reload(addr: SocketAddr) -> Result<String> {
    let response = client()?
        .post(format!("http://{addr}/admin/reload"))
        .send()
        .await
        .map_err(|e| Error::Replay(e.to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| Error::Replay(e.to_string()))?;
    if !status.is_success() {
        return Err(Error::Replay(format!("reload answered {status}: {body}")));
    }
    Ok(body["active"].as_str().unwrap_or_default().to_owned())
}

/// Mean with a 95% bootstrap interval (percentile, 2,000 resamples, seeded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub lo95: f64,
    pub hi95: f64,
}

pub fn bootstrap(values: &[f64], seed: u64) -> Estimate {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Estimate { mean, lo95: mean, hi95: mean };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..2_000)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Estimate {
        mean,
        lo95: means[(0.025 * means.len() as f64) as usize],
        hi95: means[((0.975 * means.len() as f64) as usize).min(means.len() - 1)],
    }
}

/// The test prompts served at one point of the loop.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub checkpoint: String,
    pub quality: Estimate,
    /// USD per 1,000 requests.
    pub cost_per_1k: Estimate,
    /// The route's objective on what was served: quality − cost and latency terms of the
    /// trade-off (realised cost; the mock's latency is not a model's, so latency counts 0).
    pub utility: Estimate,
    /// Paired differences against the weak start (same prompts).
    pub quality_gain: Option<Estimate>,
    pub utility_gain: Option<Estimate>,
    pub shares: BTreeMap<String, f64>,
    pub decisions: BTreeMap<String, usize>,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: usize,
    pub train_prompts: usize,
    /// Realised on the exploring route: what exploration cost while it ran.
    pub served_quality: f64,
    pub served_cost_per_1k: f64,
    pub explored_share: f64,
    pub learn_outcome: String,
    pub promoted: bool,
    pub learn_seconds: f64,
    /// The candidate's DR quality and utility on the held-out log rows, ±1.96 s.e.
    pub ope_new: Option<Estimate>,
    pub ope_new_utility: Option<Estimate>,
    pub ope_active: Option<Estimate>,
    pub test: TestResult,
    /// With fresh prompts: the same checkpoint on the held-out slice of the training split.
    pub holdout: Option<TestResult>,
    /// When this round promoted: what the gate estimated beside what the promotion realised.
    pub promotion: Option<PromotionCheck>,
}

/// A promotion's off-policy estimate held against the realised utility gain of the promoted
/// checkpoint over the one it replaced (paired, same prompts, exploration off).
#[derive(Debug, Clone, Serialize)]
pub struct PromotionCheck {
    /// The gate's DR estimate of the utility difference, ±1.96 s.e.
    pub estimate: Estimate,
    /// Realised on the test split.
    pub test: Estimate,
    /// Realised on the held-out slice of the training split (fresh prompts): the log's own
    /// distribution, so the fair yardstick for an estimate made on the log.
    pub holdout: Option<Estimate>,
}

impl PromotionCheck {
    /// Whether the realised gain lies within the estimate's 95% interval.
    fn within(&self, realised: &Estimate) -> bool {
        (self.estimate.lo95..=self.estimate.hi95).contains(&realised.mean)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LoopReport {
    pub dataset: String,
    pub candidates: Vec<String>,
    pub tradeoff: String,
    pub exploration: String,
    pub shuffle_feedback: bool,
    pub test_prompts: usize,
    pub start: TestResult,
    /// With fresh prompts: the start on the held-out slice of the training split.
    pub start_holdout: Option<TestResult>,
    pub rounds: Vec<Round>,
    /// Each single candidate on the test prompts (quality, USD per 1k).
    pub singles: Vec<(String, f64, f64)>,
    pub oracle_quality: f64,
    /// The final checkpoint on the test prompts through a route with the gateway's default
    /// exploration; `quality_gain` is against exploration off (same prompts, paired).
    pub default_exploration: TestResult,
}

/// The test prompts through [`EVAL_ROUTE`].
async fn measure(addr: SocketAddr, plan: &LoopPlan, test: &[Prompt], checkpoint: String, start: Option<&Served>) -> Result<(TestResult, Served)> {
    measure_on(addr, EVAL_ROUTE, plan, test, checkpoint, start).await
}

/// Per test prompt, the realised quality and utility of what was served.
pub struct Served {
    quality: Vec<f64>,
    utility: Vec<f64>,
}

impl Served {
    /// Paired utility gain of `self` over `before` (same prompts, same order).
    fn utility_gain_over(&self, before: &Served, seed: u64) -> Estimate {
        paired_gain(&self.utility, &before.utility, seed)
    }
}

/// Mean paired difference `now − before` (same prompts, same order) with its bootstrap interval.
fn paired_gain(now: &[f64], before: &[f64], seed: u64) -> Estimate {
    let diff: Vec<f64> = now.iter().zip(before).map(|(n, b)| n - b).collect();
    bootstrap(&diff, seed)
}

/// [`measure`] on the held-out training prompts, when the run keeps some.
async fn measure_holdout(addr: SocketAddr, plan: &LoopPlan, holdout: Option<&[Prompt]>, checkpoint: String, start: Option<&Served>) -> Result<(Option<TestResult>, Option<Served>)> {
    match holdout {
        Some(prompts) => {
            let (result, served) = measure(addr, plan, prompts, checkpoint, start).await?;
            Ok((Some(result), Some(served)))
        }
        None => Ok((None, None)),
    }
}

async fn measure_on(addr: SocketAddr, route: &str, plan: &LoopPlan, test: &[Prompt], checkpoint: String, start: Option<&Served>) -> Result<(TestResult, Served)> {
    let answers = send_all(addr, route, test, plan).await?;
    let quality: Vec<f64> = answers.iter().map(|a| test[a.prompt].quality[a.candidate]).collect();
    let cost: Vec<f64> = answers.iter().map(|a| test[a.prompt].cost[a.candidate] * 1e3).collect();
    let utility: Vec<f64> = answers
        .iter()
        .map(|a| plan.tradeoff.utility(test[a.prompt].quality[a.candidate], test[a.prompt].cost[a.candidate], 0.0))
        .collect();
    let gain = start.map(|s| paired_gain(&quality, &s.quality, plan.seed ^ 0x9e37));
    let utility_gain = start.map(|s| paired_gain(&utility, &s.utility, plan.seed ^ 0x9e38));
    let mut shares = BTreeMap::new();
    let mut decisions = BTreeMap::new();
    for a in &answers {
        *shares.entry(plan.candidates[a.candidate].clone()).or_insert(0.0) += 1.0 / answers.len() as f64;
        *decisions.entry(a.decision.clone()).or_insert(0) += 1;
    }
    Ok((
        TestResult {
            checkpoint,
            quality: bootstrap(&quality, plan.seed),
            cost_per_1k: bootstrap(&cost, plan.seed ^ 1),
            utility: bootstrap(&utility, plan.seed ^ 2),
            quality_gain: gain,
            utility_gain,
            shares,
            decisions,
        },
        Served { quality, utility },
    ))
}

/// Where the learn step works.
#[derive(Debug, Clone)]
pub struct LearnSetup {
    pub database_url: String,
    /// The gateway's `[router] checkpoint` (a copy of the weak start).
    pub active: PathBuf,
    pub embedder_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub min_rows: usize,
    pub promote_margin: f64,
    /// Judgements a promising challenger gets (`switchyard learn --challenger-looks`).
    pub challenger_looks: u32,
    /// Judge challengers on rows repeating a prompt they learned from too.
    pub judge_repeated_prompts: bool,
    /// The reward model of challengers' judgements.
    pub judge_reward_model: training::learn::JudgeRewardModel,
    /// Train each round's candidate from random weights instead of the serving checkpoint's.
    pub cold_start: bool,
    /// Epochs without a better validation loss before training stops (`None`: the default).
    pub patience: Option<usize>,
    /// After each round the active checkpoint is copied to `<snapshots>/round-N`.
    pub snapshots: Option<PathBuf>,
}

/// Copies the checkpoint in `active` (its two files) to `to`.
pub fn snapshot(active: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    for file in [router_model::checkpoint::WEIGHTS_FILE, router_model::checkpoint::META_FILE] {
        std::fs::copy(active.join(file), to.join(file)).map_err(|e| Error::io(format!("copying {}", active.join(file).display()), e))?;
    }
    Ok(())
}

/// A checkpoint's test-split AIQ over `candidates` (the offline sweep of `switchyard eval
/// routing`), and its offline quality and cost (USD per 1k) at `tradeoff`.
pub fn test_aiq(model: &crate::ModelOptions, dataset: &training::DatasetSpec, candidates: &[String], tradeoff: Tradeoff, cache_dir: &Path) -> Result<(f64, f64, f64)> {
    let loaded = model.load()?;
    let data = training::data::load(dataset)?;
    let mut cache = training::embed_cache::EmbeddingCache::open(cache_dir, router_model::Embedder::id(&loaded.embedder), router_model::Embedder::dim(&loaded.embedder))?;
    let mut embed = crate::offline::cached(&mut cache, &loaded.embedder);
    let set = crate::offline::EvalSet::build(&data, Split::Test, &loaded.checkpoint, &loaded.prices, Some(candidates), None, &mut embed)?;
    let report = crate::report::evaluate(&set, crate::report::STRONG, crate::report::WEAK, "test", None);
    let point = set.point(&set.choices(tradeoff));
    Ok((report.aiq.router, point.quality, point.cost * 1e3))
}

/// The test prompts with each candidate's cost as the gateway bills it (the answer's usage at
/// the configured price) in place of the dataset's. The log — and so the learner and its
/// off-policy estimates — sees the billed cost; the dataset's counts the benchmark's original
/// prompts (few-shot context and all) and is 2–3× higher for every model here, so measuring
/// with it would reward cost savings more than anything the loop was asked to optimise.
async fn billed_by_gateway(addr: SocketAddr, plan: &LoopPlan, test: &[Prompt]) -> Result<Vec<Prompt>> {
    let mut priced = test.to_vec();
    for (j, model) in plan.candidates.iter().enumerate() {
        for answer in send_all(addr, model, test, plan).await? {
            priced[answer.prompt].cost[j] = answer.cost_usd;
        }
    }
    Ok(priced)
}

/// The training prompts round `round` (1-based) sends: all of them, or with
/// [`LoopPlan::fresh_prompts`] the round's share of a split into `rounds + 1` disjoint slices
/// (the last is [`holdout_prompts`]).
fn round_prompts<'a>(train: &'a [Prompt], plan: &LoopPlan, round: usize) -> &'a [Prompt] {
    if !plan.fresh_prompts {
        return train;
    }
    let per_slice = fresh_slice_len(train, plan);
    &train[(round - 1) * per_slice..round * per_slice]
}

/// With [`LoopPlan::fresh_prompts`], the slice of the training prompts no round sends.
fn holdout_prompts<'a>(train: &'a [Prompt], plan: &LoopPlan) -> Option<&'a [Prompt]> {
    plan.fresh_prompts.then(|| &train[plan.rounds * fresh_slice_len(train, plan)..])
}

/// Prompts per slice with [`LoopPlan::fresh_prompts`]: one slice per round and the held-out one.
fn fresh_slice_len(train: &[Prompt], plan: &LoopPlan) -> usize {
    train.len() / (plan.rounds + 1)
}

/// Runs the loop against the gateway at `addr` (see the module doc).
pub async fn run_loop(addr: SocketAddr, plan: &LoopPlan, learn: &LearnSetup, train: &[Prompt], test: &[Prompt], dataset: &str) -> Result<LoopReport> {
    let version = reload(addr).await?;
    let test = &billed_by_gateway(addr, plan, test).await?;
    let (start, start_served) = measure(addr, plan, test, version, None).await?;
    eprintln!(
        "start ({}): test quality {:.4} [{:.4}, {:.4}], USD/1k {:.4}, utility {:.4}",
        start.checkpoint, start.quality.mean, start.quality.lo95, start.quality.hi95, start.cost_per_1k.mean, start.utility.mean
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed ^ 0x5eed);
    // Fresh slices must each look like the whole split: the prompts come in dataset order.
    let shuffled: Vec<Prompt>;
    let train = if plan.fresh_prompts {
        shuffled = {
            let mut copy = train.to_vec();
            copy.shuffle(&mut rand::rngs::StdRng::seed_from_u64(plan.seed ^ 0xf5e5));
            copy
        };
        &shuffled[..]
    } else {
        train
    };
    let holdout = match holdout_prompts(train, plan) {
        Some(prompts) => Some(billed_by_gateway(addr, plan, prompts).await?),
        None => None,
    };
    let (start_holdout, start_holdout_served) = measure_holdout(addr, plan, holdout.as_deref(), start.checkpoint.clone(), None).await?;
    let mut rounds = Vec::new();
    let mut sent = 0usize;
    // What the serving checkpoint got before this round: a promotion's realised gain is over it.
    let mut before_test = None::<Served>;
    let mut before_holdout = None::<Served>;
    for round in 1..=plan.rounds {
        let train = round_prompts(train, plan, round);
        let answers = send_all(addr, LEARN_ROUTE, train, plan).await?;
        sent += answers.len();
        let served_quality = answers.iter().map(|a| train[a.prompt].quality[a.candidate]).sum::<f64>() / answers.len().max(1) as f64;
        let served_cost = answers.iter().map(|a| a.cost_usd).sum::<f64>() * 1e3 / answers.len().max(1) as f64;
        let explored = answers.iter().filter(|a| a.decision == "explored").count() as f64 / answers.len().max(1) as f64;
        // Shuffled feedback: the label of a random (prompt, model) pair, so that no policy is
        // better than another by the feedback.
        let donors: Vec<(usize, usize)> =
            (0..train.len()).map(|_| (rng.random_range(0..train.len()), rng.random_range(0..plan.candidates.len()))).collect();
        send_feedback(
            addr,
            &answers,
            |a| {
                if plan.shuffle_feedback {
                    let (prompt, model) = donors[a.prompt];
                    train[prompt].quality[model]
                } else {
                    train[a.prompt].quality[a.candidate]
                }
            },
            plan.concurrency,
        )
        .await?;
        wait_for_log(&learn.database_url, sent, sent).await?;

        let mut options = LearnOptions::new(learn.database_url.clone(), learn.active.clone());
        // Measurement traffic (the test prompts) is never learned from.
        options.routes = vec![LEARN_ROUTE.to_owned()];
        options.install_challenger = plan.challenger_share > 0.0;
        options.min_rows = learn.min_rows;
        options.promote_margin = learn.promote_margin;
        options.challenger_looks = learn.challenger_looks;
        options.judge_repeated_prompts = learn.judge_repeated_prompts;
        options.judge_reward_model = learn.judge_reward_model;
        options.embedder_dir = learn.embedder_dir.clone();
        options.cache_dir = learn.cache_dir.clone();
        options.train.progress = false;
        options.train.seed = plan.seed.wrapping_add(round as u64);
        options.train.warm_start = !learn.cold_start;
        if let Some(patience) = learn.patience {
            options.train.patience = patience;
        }
        let started = Instant::now();
        let outcome = training::learn::run(&options).await?;
        let learn_seconds = started.elapsed().as_secs_f64();
        let interval = |mean: f64, se: f64| Estimate { mean, lo95: mean - 1.96 * se, hi95: mean + 1.96 * se };
        let ope = outcome.estimate().cloned();
        let ope_new = ope.as_ref().map(|o| interval(o.new.doubly_robust, o.new.doubly_robust_se));
        let ope_new_utility = ope.as_ref().map(|o| interval(o.new.utility_dr, o.new.utility_dr_se));
        let ope_active = ope.as_ref().map(|o| interval(o.active.doubly_robust, o.active.doubly_robust_se));
        if let Some(dir) = &learn.snapshots {
            snapshot(&learn.active, &dir.join(format!("round-{round}")))?;
            // The undecided candidate too, so the report can say what the gate held back.
            let challenger = options.challenger_dir();
            if challenger.join(router_model::checkpoint::META_FILE).is_file() {
                snapshot(&challenger, &dir.join(format!("round-{round}-challenger")))?;
            }
        }
        let version = reload(addr).await?;
        let (test_result, served) = measure(addr, plan, test, version.clone(), Some(&start_served)).await?;
        let (holdout_result, holdout_served) = measure_holdout(addr, plan, holdout.as_deref(), version, start_holdout_served.as_ref()).await?;
        let promotion = match (outcome.promoted(), &ope) {
            (true, Some(ope)) => {
                let (mean, lo95, hi95) = ope.dr_difference_interval95();
                let test_before = before_test.as_ref().unwrap_or(&start_served);
                let holdout_before = before_holdout.as_ref().or(start_holdout_served.as_ref());
                Some(PromotionCheck {
                    estimate: Estimate { mean, lo95, hi95 },
                    test: served.utility_gain_over(test_before, plan.seed ^ 0x9e39),
                    holdout: holdout_served.as_ref().zip(holdout_before).map(|(now, before)| now.utility_gain_over(before, plan.seed ^ 0x9e3a)),
                })
            }
            _ => None,
        };
        if let Some(p) = &promotion {
            eprintln!(
                "round {round}: promotion estimate {:+.4} [{:+.4}, {:+.4}], realised on the test split {:+.4}, on held-out training prompts {}",
                p.estimate.mean,
                p.estimate.lo95,
                p.estimate.hi95,
                p.test.mean,
                p.holdout.map_or_else(|| "-".to_owned(), |h| format!("{:+.4}", h.mean))
            );
        }
        before_test = Some(served);
        before_holdout = holdout_served;
        if let Some(h) = &holdout_result {
            let gain = h.utility_gain.unwrap_or(Estimate { mean: 0.0, lo95: 0.0, hi95: 0.0 });
            eprintln!(
                "round {round}: held-out training-split prompts: utility {:.4} (gain {:+.4} [{:+.4}, {:+.4}])",
                h.utility.mean, gain.mean, gain.lo95, gain.hi95
            );
        }
        eprintln!(
            "round {round}: served {served_quality:.4} (explored {:.1}%), learn: {} ({learn_seconds:.1} s); test quality {:.4} [{:.4}, {:.4}], USD/1k {:.4}, utility {:.4} (gain {:+.4} [{:+.4}, {:+.4}])",
            explored * 100.0,
            outcome.describe(),
            test_result.quality.mean,
            test_result.quality.lo95,
            test_result.quality.hi95,
            test_result.cost_per_1k.mean,
            test_result.utility.mean,
            test_result.utility_gain.map_or(0.0, |g| g.mean),
            test_result.utility_gain.map_or(0.0, |g| g.lo95),
            test_result.utility_gain.map_or(0.0, |g| g.hi95),
        );
        rounds.push(Round {
            round,
            train_prompts: train.len(),
            served_quality,
            served_cost_per_1k: served_cost,
            explored_share: explored,
            learn_outcome: outcome.describe(),
            promoted: outcome.promoted(),
            learn_seconds,
            ope_new,
            ope_new_utility,
            ope_active,
            test: test_result,
            holdout: holdout_result,
            promotion,
        });
    }
    let final_version = rounds.last().map_or_else(|| start.checkpoint.clone(), |r: &Round| r.test.checkpoint.clone());
    let off_served = before_test.unwrap_or(start_served);
    let (default_exploration, _) = measure_on(addr, DEFAULT_EXPLORATION_ROUTE, plan, test, final_version, Some(&off_served)).await?;
    eprintln!(
        "final checkpoint, exploration off {:.4} / at the gateway's default {:.4} (paired difference {:+.4})",
        off_served.quality.iter().sum::<f64>() / off_served.quality.len().max(1) as f64,
        default_exploration.quality.mean,
        default_exploration.quality_gain.map_or(0.0, |g| g.mean)
    );
    let singles = plan
        .candidates
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let n = test.len().max(1) as f64;
            (c.clone(), test.iter().map(|p| p.quality[j]).sum::<f64>() / n, test.iter().map(|p| p.cost[j]).sum::<f64>() * 1e3 / n)
        })
        .collect();
    let oracle_quality = test
        .iter()
        .map(|p| {
            (0..p.quality.len())
                .map(|j| plan.tradeoff.utility(p.quality[j], p.cost[j], 0.0))
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0.0, |(j, _)| p.quality[j])
        })
        .sum::<f64>()
        / test.len().max(1) as f64;
    Ok(LoopReport {
        dataset: dataset.to_owned(),
        candidates: plan.candidates.clone(),
        tradeoff: plan.tradeoff.to_string(),
        exploration: format!(
            "{:?}, max share {}, temperature {}",
            plan.exploration.policy, plan.exploration.max_share, plan.exploration.temperature
        ),
        shuffle_feedback: plan.shuffle_feedback,
        test_prompts: test.len(),
        start,
        start_holdout,
        rounds,
        singles,
        oracle_quality,
        default_exploration,
    })
}

impl LoopReport {
    pub fn markdown(&self, command: &str, extra: &str) -> String {
        let e = |x: &Estimate| format!("{:.4} [{:.4}, {:.4}]", x.mean, x.lo95, x.hi95);
        let mut s = format!("# The learning loop through the gateway: {}\n\nProduced by\n\n```sh\n{command}\n```\n\n", self.dataset);
        s.push_str(&format!(
            "Candidates {}; trade-off `{}`; training traffic through route `{LEARN_ROUTE}` ({}), measurement through route \
             `{EVAL_ROUTE}` (exploration off) on {} test prompts the selector never trained on. Feedback: {}.\n\n",
            self.candidates.join(", "),
            self.tradeoff,
            self.exploration,
            self.test_prompts,
            if self.shuffle_feedback { "**shuffled labels** (each answer rated with the label of a random prompt for a random model: by the feedback every policy is as good as any other, so at a quality-only trade-off any promotion is a false one)" } else { "the dataset's label for the model that answered" }
        ));
        s.push_str("| after | checkpoint | test quality [95%] | quality gain vs start [95%, paired] | USD / 1k req | utility [95%] | utility gain vs start [95%, paired] | learn step | off-policy DR quality of candidate [95%] | served while exploring | explored |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        s.push_str(&format!(
            "| start | {} | {} | | {:.4} | {} | | | | | |\n",
            self.start.checkpoint,
            e(&self.start.quality),
            self.start.cost_per_1k.mean,
            e(&self.start.utility)
        ));
        for r in &self.rounds {
            s.push_str(&format!(
                "| round {} | {} | {} | {} | {:.4} | {} | {} | {} | {} | {:.4} | {:.1}% |\n",
                r.round,
                r.test.checkpoint,
                e(&r.test.quality),
                r.test.quality_gain.as_ref().map(e).unwrap_or_default(),
                r.test.cost_per_1k.mean,
                e(&r.test.utility),
                r.test.utility_gain.as_ref().map(e).unwrap_or_default(),
                r.learn_outcome.replace('|', "/"),
                r.ope_new.as_ref().map(e).unwrap_or_else(|| "-".into()),
                r.served_quality,
                r.explored_share * 100.0
            ));
        }
        if let Some(start) = &self.start_holdout {
            s.push_str(&format!(
                "\nThe same checkpoints on {} prompts of the *training* split that no round sent (the log's distribution; \
                 exploration off): hold a promotion's off-policy estimate against the utility gain here as well as on the \
                 test split.\n\n| after | quality [95%] | USD / 1k req | utility [95%] | utility gain vs start [95%, paired] |\n|---|---|---|---|---|\n",
                start.decisions.values().sum::<usize>()
            ));
            let row = |name: String, r: &TestResult| {
                format!(
                    "| {name} | {} | {:.4} | {} | {} |\n",
                    e(&r.quality),
                    r.cost_per_1k.mean,
                    e(&r.utility),
                    r.utility_gain.as_ref().map(e).unwrap_or_default()
                )
            };
            s.push_str(&row("start".into(), start));
            for r in &self.rounds {
                if let Some(h) = &r.holdout {
                    s.push_str(&row(format!("round {}", r.round), h));
                }
            }
        }
        let promotions: Vec<&Round> = self.rounds.iter().filter(|r| r.promotion.is_some()).collect();
        if !promotions.is_empty() {
            s.push_str(
                "\nEach promotion's off-policy estimate (the gate's DR utility difference, ±1.96 s.e.) beside the utility gain \
                 the promoted checkpoint realised over the one it replaced (paired, exploration off):\n\n\
                 | round | estimate [95%] | realised, test split [95%] | within the estimate's interval | realised, held-out training prompts [95%] | within |\n|---|---|---|---|---|---|\n",
            );
            for r in promotions {
                let Some(p) = &r.promotion else { continue };
                let yes = |realised: &Estimate| if p.within(realised) { "yes" } else { "no" };
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    r.round,
                    e(&p.estimate),
                    e(&p.test),
                    yes(&p.test),
                    p.holdout.as_ref().map(e).unwrap_or_else(|| "-".into()),
                    p.holdout.as_ref().map_or("-", yes)
                ));
            }
        }
        s.push_str("\nSingle models on the test prompts: ");
        s.push_str(
            &self
                .singles
                .iter()
                .map(|(m, q, c)| format!("{m} {q:.4} at {c:.4} USD/1k"))
                .collect::<Vec<_>>()
                .join("; "),
        );
        s.push_str(&format!(
            ". Oracle at this trade-off (realised labels and costs): {:.4}.\n\n![learning curve: test utility per round](learning_curve.svg)\n",
            self.oracle_quality
        ));
        let d = &self.default_exploration;
        s.push_str(&format!(
            "\nWhat exploration at the gateway's default (route `{DEFAULT_EXPLORATION_ROUTE}`: no exploration keys set) costs \
             with the final checkpoint: test quality {} against exploration off, paired difference {} ({:.2}% of quality); \
             USD / 1k {:.4}; decisions {:?}.\n",
            e(&d.quality),
            d.quality_gain.as_ref().map(e).unwrap_or_default(),
            d.quality_gain.map_or(0.0, |g| 100.0 * g.mean / d.quality.mean.max(1e-9)),
            d.cost_per_1k.mean,
            d.decisions
        ));
        s.push_str(extra);
        s
    }
}
