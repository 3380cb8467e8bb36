//! `switchyard learn`: one turn of the loop from served traffic to a better selector, safe to
//! run on a schedule.
//!
//! A run reads the outcome log (rows + feedback), and does nothing unless rows or feedback
//! changed since the last run (the watermark in `<active>.learn.json`), so a CronJob that
//! fires twice, or on a quiet hour, promotes nothing and changes nothing. Otherwise it trains a
//! candidate on the whole log (or the rows since `since`), warm-started from the active
//! checkpoint, estimates the candidate and the active checkpoint off-policy on the newest
//! rows (IPS and doubly robust, paired 95% bound), and promotes only when the bound clears
//! the margin. Every decision is appended to `<active>.promotions.jsonl`, which the dashboard
//! shows.
//!
//! Two stages (the default; `install_challenger = false` promotes on the held-out rows
//! directly):
//! 1. a candidate that the held-out rows do not show worse (the DR difference's 95% upper
//!    bound reaches the margin) becomes the **challenger** (`<active>.challenger`), which the
//!    gateway lets decide `[router] challenger_share` of exploring traffic;
//! 2. the next run with enough rated rows logged *after the challenger was trained* judges it
//!    on those rows — rows it never learned from, on which its picks were served at
//!    probability ≥ share × its own — and promotes it when the gate's bound clears the
//!    margin. Its reward model is the log itself ([`db::NearestRows`] over the rows logged
//!    before the challenger was trained), not either checkpoint's beliefs. A challenger whose
//!    estimate is above the margin but whose bound is not (promising, unproven) keeps its share and is judged again by the next run on every row
//!    since it was trained, up to `challenger_looks` judgements; the bound then uses Pocock's
//!    z for that many looks, so judging again does not raise the chance of promoting a
//!    no-better challenger above 5% ([`challenger_verdict`]). Otherwise it is retired, and
//!    that run's new candidate goes through stage 1.
//!
//! Why not promote on the held-out rows alone: there the candidate's picks were served only by
//! exploration around the active policy, rarely, so the few rows that verify them carry large
//! inverse propensities; the difference is then right-skewed and its normal bound can pass a
//! candidate trained on signal-free feedback (seen on the learning bench: DR +0.081, bound
//! +0.006, served −0.10 on the test prompts), while where they are rarer still the clipping
//! charge lets nothing through. The second stage is a 95% test as well, but on rows where the
//! candidate's picks were served at ≥ share × its own probability (see
//! `db::gate_calibration`: 279 of 300 truly better challengers promoted where the single stage
//! promotes none, 16 of 300 no-better ones).
//!
//! The whole log rather than only the new rows: each row keeps the propensity of the policy
//! that served it, so older rows stay valid training data for the clipped-IPS loss, and a
//! warm start alone would forget what an earlier round learned.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::db::{self, LoggedRequest};
use crate::error::{Error, Result};
use crate::{RunReport, TrainConfig, TrainOptions};

/// Logged rows with feedback a run needs before it trains at all.
pub const DEFAULT_MIN_ROWS: usize = 100;

/// Judgements a promising challenger gets before it is retired (`--challenger-looks`). One:
/// on the fresh-prompts learning bench (3 rounds of ~550 prompts, seeds 7/11/13/17/19) two
/// looks promoted in 1 of 5 seeds (seed 7, a round later) where one look promoted in 2 (7 and
/// 17): the first look's wider bound (1.875) missed challengers a single look passes, and the
/// round spent judging again trains no new candidate. More looks pay where each run sees few
/// new rows and runs are many (an hourly schedule), not over three rounds.
pub const DEFAULT_CHALLENGER_LOOKS: u32 = 1;

/// One-sided 5% Pocock boundaries: the z every look uses when a challenger may be judged up to
/// K times on accumulating rows (K = index + 1). Beyond the table, its last entry is used
/// with fewer looks allowed (see [`challenger_verdict`]).
const POCOCK_Z: [f64; 5] = [1.645, 1.875, 1.992, 2.067, 2.122];

/// The most judgements a challenger can get (the table's length).
pub const MAX_CHALLENGER_LOOKS: u32 = POCOCK_Z.len() as u32;

/// The reward model of the challenger's judgement (stage 2; a candidate's first gate on the
/// held-out rows always uses the active checkpoint's heads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeRewardModel {
    /// Each model's mean outcome on the nearest rows it served before the challenger was
    /// trained ([`db::NearestRows`]).
    #[default]
    NearestRows,
    /// The active checkpoint's heads.
    ActiveHeads,
}

impl std::str::FromStr for JudgeRewardModel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "nearest-rows" => Ok(Self::NearestRows),
            "active-heads" => Ok(Self::ActiveHeads),
            other => Err(format!("unknown reward model {other:?} (nearest-rows or active-heads)")),
        }
    }
}

/// What one judgement of the challenger says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Promote,
    /// Its estimate is above the margin but the bound is not, and it has looks left.
    JudgeAgain,
    Retire,
}

/// The challenger's verdict at judgement `look` (1-based) of at most `looks`, from the gate's
/// report on every rated row logged since it was trained. The bound uses Pocock's z for
/// `looks` (1.645 for one): the chance that a no-better challenger is promoted at *any* look
/// stays at 5% (`db::gate_calibration` measures it). Only a challenger ahead on the estimate
/// is judged again; one behind it, or out of looks, is retired.
pub fn challenger_verdict(ope: &db::OpeReport, look: u32, looks: u32) -> Verdict {
    let looks = looks.clamp(1, MAX_CHALLENGER_LOOKS);
    let z = POCOCK_Z[looks as usize - 1];
    if ope.gate_lower_bound_at(z) > ope.margin {
        Verdict::Promote
    } else if look < looks && ope.dr_difference > ope.margin {
        Verdict::JudgeAgain
    } else {
        Verdict::Retire
    }
}

/// Everything `switchyard learn` takes.
#[derive(Debug, Clone)]
pub struct LearnOptions {
    /// Outcome log (`sqlite://…` or `postgres://…`).
    pub database_url: String,
    /// The serving checkpoint directory (what the gateway's `[router] checkpoint` names).
    pub active: PathBuf,
    /// Where the candidate is written; default `<active>.candidate`.
    pub candidate: Option<PathBuf>,
    /// Where an undecided candidate is installed as the challenger; default
    /// `<active>.challenger` (the gateway's default `challenger_checkpoint`).
    pub challenger: Option<PathBuf>,
    /// Install undecided candidates as the challenger (off: the challenger is left alone).
    pub install_challenger: bool,
    /// Only rows from this RFC 3339 time on.
    pub since: Option<String>,
    /// Only rows of these routes (all when empty).
    pub routes: Vec<String>,
    /// Rows with feedback and an embedding needed to train.
    pub min_rows: usize,
    /// DR improvement the 95% lower bound must clear.
    pub promote_margin: f64,
    /// Judgements a promising challenger gets ([`challenger_verdict`]), 1 to
    /// [`MAX_CHALLENGER_LOOKS`].
    pub challenger_looks: u32,
    /// Train and evaluate, but never replace the active checkpoint.
    pub dry_run: bool,
    /// Run even when nothing changed since the last run.
    pub force: bool,
    /// Judge the challenger on rows repeating a prompt it learned from, too (off: they are
    /// left out, see [`judged_rows`]).
    pub judge_repeated_prompts: bool,
    /// The reward model the challenger's judgement fills unserved picks with.
    pub judge_reward_model: JudgeRewardModel,
    pub train: TrainConfig,
    pub embedder_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
}

impl LearnOptions {
    pub fn new(database_url: String, active: PathBuf) -> Self {
        Self {
            database_url,
            active,
            candidate: None,
            challenger: None,
            install_challenger: true,
            since: None,
            routes: Vec::new(),
            min_rows: DEFAULT_MIN_ROWS,
            promote_margin: 0.0,
            challenger_looks: DEFAULT_CHALLENGER_LOOKS,
            dry_run: false,
            force: false,
            judge_repeated_prompts: false,
            judge_reward_model: JudgeRewardModel::default(),
            train: TrainConfig::default(),
            embedder_dir: None,
            cache_dir: crate::embed_cache::default_cache_root(),
        }
    }

    fn candidate_dir(&self) -> PathBuf {
        self.candidate.clone().unwrap_or_else(|| sibling(&self.active, "candidate"))
    }

    pub fn challenger_dir(&self) -> PathBuf {
        self.challenger.clone().unwrap_or_else(|| sibling(&self.active, "challenger"))
    }
}

/// What a run did to the challenger checkpoint after training a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengerChange {
    /// The candidate was not shown worse on the held-out rows: installed as the challenger.
    Installed,
    /// The candidate was shown worse (or the challenger was judged and nothing replaced it):
    /// no challenger is left.
    Retired,
    /// The challenger was judged promising but unproven: it keeps its share until judged again.
    Kept,
    /// Dry run, or challengers are off: nothing touched.
    Untouched,
}

/// `<dir>.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// What the log held at a run: a run is due only when this changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    pub rows: usize,
    pub rows_with_feedback: usize,
    /// Ratings in all (a second rating of a row is new information too).
    pub ratings: i64,
    pub newest_row_at: Option<String>,
    /// Sum of the per-row mean feedback, to 6 decimals: catches a late rating of an old row.
    pub feedback_sum: String,
}

impl Watermark {
    pub fn of(rows: &[LoggedRequest]) -> Self {
        let rated: Vec<f64> = rows.iter().filter_map(|r| r.feedback).collect();
        Self {
            rows: rows.len(),
            rows_with_feedback: rated.len(),
            ratings: rows.iter().map(|r| r.feedback_count).sum(),
            newest_row_at: rows.iter().map(|r| r.created_at.clone()).max(),
            feedback_sum: format!("{:.6}", rated.iter().sum::<f64>()),
        }
    }
}

/// `<active>.learn.json`: the last run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearnState {
    pub ran_at: String,
    pub watermark: Watermark,
    pub outcome: String,
    /// Judgements the current challenger has had, so the next one knows its look.
    #[serde(default)]
    pub challenger_judged: Option<ChallengerLooks>,
}

/// How often the challenger trained at `trained_at` has been judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengerLooks {
    pub trained_at: String,
    pub looks: u32,
}

/// Where the state of runs against `active` is kept.
pub fn state_path(active: &Path) -> PathBuf {
    sibling(active, "learn.json")
}

fn read_state(active: &Path) -> Result<Option<LearnState>> {
    let path = state_path(active);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

fn write_state(active: &Path, state: &LearnState) -> Result<()> {
    let path = state_path(active);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("renaming into {}", path.display()), e))
}

/// How a run ended.
#[derive(Debug)]
pub enum LearnOutcome {
    /// Neither rows nor feedback changed since the last run.
    NothingNew(Watermark),
    /// Not enough rated rows to train or evaluate.
    TooFew { usable: usize, needed: usize },
    /// The challenger has fewer rated rows logged since it was trained than a judgement needs:
    /// it keeps serving its share and nothing else happens.
    ChallengerWaiting { fresh: usize, repeats: usize, needed: usize },
    /// Something was decided.
    Evaluated {
        /// The challenger's judgement on the rows logged since it was trained (promoted, kept
        /// to be judged again, or retired), when one was due.
        judged: Option<Box<db::PromotionRecord>>,
        /// The candidate trained this run and what the gate said of it (`promotion`; none on a
        /// dry run); absent when too few rows were left to train one.
        candidate: Option<Box<RunReport>>,
        /// What became of the challenger after the candidate's evaluation.
        challenger: ChallengerChange,
    },
}

impl LearnOutcome {
    pub fn promoted(&self) -> bool {
        match self {
            Self::Evaluated { judged, candidate, .. } => {
                judged.as_ref().is_some_and(|j| j.promoted)
                    || candidate.as_ref().and_then(|c| c.promotion.as_ref()).is_some_and(|p| p.promoted)
            }
            _ => false,
        }
    }

    /// The off-policy estimate behind this run's decision: the promoted checkpoint's, else the
    /// last one judged.
    pub fn estimate(&self) -> Option<&db::OpeReport> {
        let Self::Evaluated { judged, candidate, .. } = self else { return None };
        let judged = judged.as_deref().map(|j| (j.promoted, &j.ope));
        let candidate = candidate.as_deref().and_then(|c| c.ope.as_ref().map(|o| (c.promotion.as_ref().is_some_and(|p| p.promoted), o)));
        match (judged, candidate) {
            (Some((true, o)), _) | (_, Some((true, o))) => Some(o),
            (_, Some((_, o))) | (Some((_, o)), None) => Some(o),
            (None, None) => None,
        }
    }

    /// One line for logs and the state file.
    pub fn describe(&self) -> String {
        match self {
            Self::NothingNew(w) => format!(
                "nothing new since the last run ({} rows, {} with feedback): no training, no promotion",
                w.rows, w.rows_with_feedback
            ),
            Self::TooFew { usable, needed } => format!(
                "{usable} logged rows with feedback and an embedding; {needed} needed before a candidate is trained: no promotion"
            ),
            Self::ChallengerWaiting { fresh, repeats, needed } => format!(
                "the challenger has {fresh} rated rows logged since it was trained{}; {needed} needed to judge it: it keeps serving its share, no promotion",
                if *repeats > 0 { format!(" (and {repeats} repeating a prompt it learned from, which do not count)") } else { String::new() }
            ),
            Self::Evaluated { judged, candidate, challenger } => {
                let mut parts = Vec::new();
                if let Some(j) = judged {
                    parts.push(format!("challenger {}", j.reason));
                }
                if let Some(r) = candidate {
                    parts.push(match (&r.promotion, &r.ope) {
                        (Some(p), _) => format!(
                            "{}: {}",
                            match (p.promoted, challenger) {
                                (true, _) => "promoted",
                                (false, ChallengerChange::Installed) => "new challenger",
                                (false, _) => "not promoted",
                            },
                            p.reason
                        ),
                        (None, Some(o)) => format!(
                            "dry run: DR difference {:+.4}, 95% lower bound {:+.4} (margin {:.3}); would {}promote",
                            o.dr_difference,
                            o.gate_lower_bound,
                            o.margin,
                            if o.better { "" } else { "not " }
                        ),
                        (None, None) => "trained, but no held-out rows to evaluate on: no promotion".into(),
                    });
                }
                parts.join("; then ")
            }
        }
    }
}

/// One learning run (see the module doc).
pub async fn run(opts: &LearnOptions) -> Result<LearnOutcome> {
    if !opts.active.join(router_model::checkpoint::META_FILE).is_file() {
        return Err(Error::InvalidInput(format!(
            "{}: no selector checkpoint to learn from; train one first (switchyard train --dataset …)",
            opts.active.display()
        )));
    }
    let logged = db::load_logged_routes(&opts.database_url, opts.since.as_deref(), &opts.routes).await?;
    let watermark = Watermark::of(&logged);
    let previous = read_state(&opts.active)?;
    if !opts.force && previous.as_ref().is_some_and(|s| s.watermark == watermark) {
        return Ok(LearnOutcome::NothingNew(watermark));
    }
    let earlier_looks = previous.and_then(|s| s.challenger_judged);
    let (outcome, challenger_judged) = decide(opts, &logged, earlier_looks).await?;
    write_state(
        &opts.active,
        &LearnState {
            ran_at: crate::now_rfc3339(),
            watermark,
            outcome: outcome.describe(),
            challenger_judged,
        },
    )?;
    Ok(outcome)
}

/// The run's outcome, and the challenger's judgements so far when it stays to be judged again.
async fn decide(
    opts: &LearnOptions,
    logged: &[LoggedRequest],
    earlier_looks: Option<ChallengerLooks>,
) -> Result<(LearnOutcome, Option<ChallengerLooks>)> {
    let two_stage = opts.install_challenger;
    let challenger_dir = opts.challenger_dir();
    let mut judged = None;
    if two_stage && challenger_dir.join(router_model::checkpoint::META_FILE).is_file() {
        match judge_challenger(opts, logged, &challenger_dir, earlier_looks.as_ref())? {
            Judgement::Waiting { fresh, repeats, needed } => {
                return Ok((LearnOutcome::ChallengerWaiting { fresh, repeats, needed }, earlier_looks));
            }
            Judgement::Judged { record, judge_again: Some(looks) } => {
                // Promising but unproven: no new candidate until it is judged again.
                let outcome = LearnOutcome::Evaluated { judged: Some(record), candidate: None, challenger: ChallengerChange::Kept };
                return Ok((outcome, Some(looks)));
            }
            Judgement::Judged { record, judge_again: None } => judged = Some(record),
            Judgement::Dropped => {}
        }
    }
    decide_candidate(opts, logged, judged).await.map(|outcome| (outcome, None))
}

/// Trains this run's candidate and puts it through its gate.
async fn decide_candidate(
    opts: &LearnOptions,
    logged: &[LoggedRequest],
    judged: Option<Box<db::PromotionRecord>>,
) -> Result<LearnOutcome> {
    let two_stage = opts.install_challenger;
    let challenger_dir = opts.challenger_dir();

    let usable = logged
        .iter()
        .filter(|r| r.feedback.is_some() && r.succeeded() && r.embedding.is_some())
        .count();
    let needed = opts.min_rows.max(2);
    // No candidate this run: what was judged (if anything) is the outcome.
    let untrained = |judged: Option<Box<db::PromotionRecord>>| match judged {
        Some(_) => LearnOutcome::Evaluated { judged, candidate: None, challenger: ChallengerChange::Retired },
        None => LearnOutcome::TooFew { usable, needed },
    };
    if usable < needed {
        return Ok(untrained(judged));
    }
    let mut train = TrainOptions::new(opts.candidate_dir());
    train.from_db = Some(opts.database_url.clone());
    train.since = opts.since.clone();
    train.routes = opts.routes.clone();
    train.active = Some(opts.active.clone());
    // With challengers a candidate is never promoted on the held-out rows alone: it must win
    // again as the challenger, on traffic logged after it was trained.
    train.promote = !opts.dry_run && !two_stage;
    train.promote_margin = opts.promote_margin;
    train.train = opts.train.clone();
    train.embedder_dir = opts.embedder_dir.clone();
    train.cache_dir = opts.cache_dir.clone();
    let mut report = match crate::run(&train).await {
        Ok(report) => report,
        // Too few held-out rows to evaluate is a quiet outcome, not a failure.
        Err(Error::InvalidInput(message)) if message.contains("too few") || message.contains("held-out") => {
            return Ok(untrained(judged));
        }
        Err(e) => return Err(e),
    };
    let challenger = if two_stage && !opts.dry_run {
        second_stage(opts, &mut report, &challenger_dir)?
    } else {
        ChallengerChange::Untouched
    };
    Ok(LearnOutcome::Evaluated {
        judged,
        candidate: Some(Box::new(report)),
        challenger,
    })
}

enum Judgement {
    Waiting { fresh: usize, repeats: usize, needed: usize },
    /// It no longer loads beside the active checkpoint (other candidates or embedder).
    Dropped,
    /// `judge_again`: it stays, with this many judgements behind it.
    Judged { record: Box<db::PromotionRecord>, judge_again: Option<ChallengerLooks> },
}

/// Judges the challenger on the rated rows logged after it was trained (none of which it
/// learned from; with it serving its share, its picks are there at high propensity):
/// promoted, kept to be judged again, or retired ([`challenger_verdict`]).
fn judge_challenger(
    opts: &LearnOptions,
    logged: &[LoggedRequest],
    challenger_dir: &Path,
    earlier_looks: Option<&ChallengerLooks>,
) -> Result<Judgement> {
    let active_meta = router_model::Checkpoint::read_meta(&opts.active)?;
    let (id, dim) = (active_meta.embedder.id.clone(), active_meta.embedder.dim);
    let active = router_model::Checkpoint::load(&opts.active, &id, dim)?;
    let challenger = match router_model::Checkpoint::load(challenger_dir, &id, dim) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, path = %challenger_dir.display(), "challenger does not load beside the active checkpoint; retiring it");
            if !opts.dry_run {
                retire(challenger_dir)?;
            }
            return Ok(Judgement::Dropped);
        }
    };
    let trained_at = parse_time(&challenger.meta.created_at)?;
    let JudgedRows { rows: fresh, repeats, before } = judged_rows(logged, dim, trained_at, opts.judge_repeated_prompts);
    let needed = opts.min_rows.max(2);
    if fresh.len() < needed {
        return Ok(Judgement::Waiting { fresh: fresh.len(), repeats, needed });
    }
    let predict = |c: &router_model::Checkpoint, r: &LoggedRequest| -> Result<Vec<router_model::Prediction>> {
        Ok(c.predict(r.embedding.as_deref().unwrap_or(&[]), &r.features())?)
    };
    // The reward model sees only rows logged before the challenger was trained: none of the
    // rows it judges, so the estimate stays unbiased.
    let nearest = db::NearestRows::from_rows(before, dim);
    let reward = match opts.judge_reward_model {
        JudgeRewardModel::NearestRows => db::RewardModel::NearestRows(&nearest),
        JudgeRewardModel::ActiveHeads => db::RewardModel::ActiveHeads,
    };
    let ope = match db::evaluate_policies(
        &fresh,
        challenger.candidates(),
        &|r| predict(&challenger, r),
        active.candidates(),
        &|r| predict(&active, r),
        reward,
        opts.promote_margin,
    ) {
        Ok(ope) => ope,
        Err(Error::InvalidInput(_)) => return Ok(Judgement::Waiting { fresh: fresh.len(), repeats, needed }),
        Err(e) => return Err(e),
    };
    // Judgements of an earlier challenger do not count for this one.
    let looks_before = earlier_looks.filter(|l| l.trained_at == challenger.meta.created_at).map_or(0, |l| l.looks);
    let look = looks_before + 1;
    let looks = opts.challenger_looks.clamp(1, MAX_CHALLENGER_LOOKS);
    let mut ope = ope;
    let z = POCOCK_Z[looks as usize - 1];
    // The recorded bound is the one this judgement used.
    ope.gate_lower_bound = ope.gate_lower_bound_at(z);
    let verdict = challenger_verdict(&ope, look, looks);
    let promoted = verdict == Verdict::Promote;
    ope.better = promoted;
    let verdict_text = match (verdict, opts.dry_run) {
        (Verdict::Promote, false) => "promoted",
        (Verdict::JudgeAgain, false) => "kept to be judged again on more rows",
        (Verdict::Retire, false) => "retired",
        (Verdict::Promote, true) => "dry run, would be promoted",
        (Verdict::JudgeAgain, true) => "dry run, would be judged again",
        (Verdict::Retire, true) => "dry run, would be retired",
    };
    let left_out = if repeats > 0 { format!(" ({repeats} more repeating a prompt it learned from left out)") } else { String::new() };
    let reason = format!(
        "{verdict_text}: judgement {look} of at most {looks}, on {} rated rows logged since it was trained{left_out}, utility DR improvement {:+.4} has lower bound {:+.4} (z = {z:.3}) {} margin {:.3} ({} rows where the policies differ, the log served its pick on {})",
        ope.rows,
        ope.dr_difference,
        ope.gate_lower_bound,
        if promoted { ">" } else { "≤" },
        ope.margin,
        ope.disagreements,
        ope.verified_new
    );
    let record = db::PromotionRecord {
        decided_at: crate::now_rfc3339(),
        candidate_checkpoint: challenger_dir.display().to_string(),
        active_checkpoint: opts.active.display().to_string(),
        promoted: promoted && !opts.dry_run,
        reason,
        ope,
    };
    let mut judge_again = None;
    if !opts.dry_run {
        match verdict {
            Verdict::Promote => {
                db::promote(challenger_dir, &opts.active)?;
                retire(challenger_dir)?;
            }
            Verdict::JudgeAgain => {
                judge_again = Some(ChallengerLooks { trained_at: challenger.meta.created_at.clone(), looks: look });
            }
            Verdict::Retire => retire(challenger_dir)?,
        }
        db::record_decision(&opts.active, &record)?;
    }
    Ok(Judgement::Judged { record: Box::new(record), judge_again })
}

/// The rows a challenger is judged on, how many were left out as repeats, and the rows logged
/// before it was trained.
struct JudgedRows<'a> {
    rows: Vec<&'a LoggedRequest>,
    repeats: usize,
    before: Vec<&'a LoggedRequest>,
}

/// The rated rows logged after the challenger was trained, less (unless `keep_repeats`) those
/// whose prompt repeats one logged before: where the same prompts come back (a batch job, the
/// cache off) a challenger gets them right by remembering their ratings, which says nothing of
/// how it routes prompts it has not seen — what most traffic is, and what promotion must
/// predict. Measured on the learning bench, where every round sends the same prompts: on the
/// rows that judged one challenger its true gain was +0.048, on the test prompts +0.026 (the
/// gate's estimate +0.068 [+0.037, +0.099]). A repeat is an identical embedding (the embedder
/// is deterministic); rows without a matching embedding size are never judged on.
fn judged_rows(logged: &[LoggedRequest], dim: usize, trained_at: chrono::DateTime<chrono::FixedOffset>, keep_repeats: bool) -> JudgedRows<'_> {
    fn embedding(r: &LoggedRequest, dim: usize) -> Option<&[f32]> {
        r.embedding.as_deref().filter(|e| e.len() == dim)
    }
    let bits = |e: &[f32]| e.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    // A row whose time does not parse is never judged on nor fed to the reward model, but its
    // prompt counts as one the challenger may have learned from.
    let (mut after, mut before, mut untimed) = (Vec::new(), Vec::new(), Vec::new());
    for r in logged {
        match parse_time(&r.created_at) {
            Ok(t) if t > trained_at => after.push(r),
            Ok(_) => before.push(r),
            Err(_) => untimed.push(r),
        }
    }
    let learned: std::collections::HashSet<Vec<u32>> = if keep_repeats {
        std::collections::HashSet::new()
    } else {
        before.iter().chain(&untimed).filter_map(|r| embedding(r, dim).map(bits)).collect()
    };
    let mut repeats = 0;
    let rows = after
        .into_iter()
        .filter(|r| r.feedback.is_some() && r.succeeded())
        .filter(|r| {
            let Some(e) = embedding(r, dim) else { return false };
            let repeat = !learned.is_empty() && learned.contains(&bits(e));
            repeats += usize::from(repeat);
            !repeat
        })
        .collect();
    JudgedRows { rows, repeats, before }
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(text).map_err(|e| Error::InvalidInput(format!("timestamp {text:?}: {e}")))
}

/// The candidate's gate with challengers on: installed as the challenger unless shown worse
/// (its DR difference's 95% upper bound below the margin), recorded either way.
fn second_stage(opts: &LearnOptions, report: &mut RunReport, challenger_dir: &Path) -> Result<ChallengerChange> {
    let Some(ope) = report.ope.clone() else {
        return Ok(ChallengerChange::Untouched);
    };
    let upper = upper_bound(&ope);
    let install = upper >= ope.margin;
    let reason = if install {
        format!(
            "utility DR improvement {:+.4} [{:+.4}, {:+.4}] on held-out rows: not shown worse, so it decides a share of exploring traffic until the next run judges it on new rows",
            ope.dr_difference, ope.dr_difference_lcb95, upper
        )
    } else {
        format!(
            "utility DR improvement {:+.4} has 95% upper bound {:+.4} < margin {:.3}: shown worse, keeping the active checkpoint",
            ope.dr_difference, upper, ope.margin
        )
    };
    let record = db::PromotionRecord {
        decided_at: crate::now_rfc3339(),
        candidate_checkpoint: report.checkpoint.display().to_string(),
        active_checkpoint: opts.active.display().to_string(),
        promoted: false,
        reason,
        ope,
    };
    db::record_decision(&opts.active, &record)?;
    report.promotion = Some(record);
    if install {
        db::promote(&report.checkpoint, challenger_dir)?;
        // `promote` keeps the replaced checkpoint beside it; an old challenger is not worth keeping.
        let _ = std::fs::remove_dir_all(sibling(challenger_dir, "previous"));
        return Ok(ChallengerChange::Installed);
    }
    retire(challenger_dir)?;
    Ok(ChallengerChange::Retired)
}

/// The DR difference's one-sided 95% upper bound (the mirror of the lower bound).
fn upper_bound(ope: &db::OpeReport) -> f64 {
    2.0 * ope.dr_difference - ope.dr_difference_lcb95
}

/// Removes a checkpoint directory in one step the gateway's reload watch cannot see half done.
fn retire(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let doomed = sibling(dir, &format!("retired-{}", std::process::id()));
    std::fs::rename(dir, &doomed).map_err(|e| Error::io(format!("retiring {}", dir.display()), e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(format!("removing {}", doomed.display()), e))
}
