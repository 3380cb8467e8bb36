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
//! A candidate the gate can neither accept nor reject (its 95% interval reaches both sides of
//! zero) becomes the **challenger** (`<active>.challenger`): the gateway lets it decide
//! `[router] challenger_share` of routed requests, so the next run's held-out rows have
//! logged what a candidate like it would pick — the evidence the gate lacked. A promotion, or
//! a candidate shown worse, retires it.
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
    /// Train and evaluate, but never replace the active checkpoint.
    pub dry_run: bool,
    /// Run even when nothing changed since the last run.
    pub force: bool,
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
            dry_run: false,
            force: false,
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

/// What a run did to the challenger checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengerChange {
    /// The candidate is undecided (its DR interval spans zero): installed as the challenger.
    Installed,
    /// The candidate was promoted or shown worse: any challenger was removed.
    Retired,
    /// Dry run, or challengers are off: nothing touched.
    Untouched,
}

impl ChallengerChange {
    fn describe(self) -> &'static str {
        match self {
            Self::Installed => "; the candidate is now the challenger",
            Self::Retired => "",
            Self::Untouched => "",
        }
    }
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
    /// A candidate was trained and evaluated; `report.promotion` says whether it replaced
    /// the active checkpoint (never under `dry_run`), the change what became of the challenger.
    Evaluated(Box<RunReport>, ChallengerChange),
}

impl LearnOutcome {
    pub fn promoted(&self) -> bool {
        matches!(self, Self::Evaluated(r, _) if r.promotion.as_ref().is_some_and(|p| p.promoted))
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
            Self::Evaluated(r, challenger) => match (&r.promotion, &r.ope) {
                (Some(p), _) => format!(
                    "{}: {}{}",
                    if p.promoted { "promoted" } else { "not promoted" },
                    p.reason,
                    challenger.describe()
                ),
                (None, Some(o)) => format!(
                    "dry run: DR difference {:+.4}, 95% lower bound {:+.4} (margin {:.3}); would {}promote",
                    o.dr_difference,
                    o.gate_lower_bound,
                    o.margin,
                    if o.better { "" } else { "not " }
                ),
                (None, None) => "trained, but no held-out rows to evaluate on: no promotion".into(),
            },
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
    let usable = logged
        .iter()
        .filter(|r| r.feedback.is_some() && r.succeeded() && r.embedding.is_some())
        .count();
    let outcome = if usable < opts.min_rows.max(2) {
        LearnOutcome::TooFew {
            usable,
            needed: opts.min_rows.max(2),
        }
    } else {
        let mut train = TrainOptions::new(opts.candidate_dir());
        train.from_db = Some(opts.database_url.clone());
        train.since = opts.since.clone();
        train.routes = opts.routes.clone();
        train.active = Some(opts.active.clone());
        train.promote = !opts.dry_run;
        train.promote_margin = opts.promote_margin;
        train.train = opts.train.clone();
        train.embedder_dir = opts.embedder_dir.clone();
        train.cache_dir = opts.cache_dir.clone();
        match crate::run(&train).await {
            Ok(report) => {
                let change = update_challenger(opts, &report)?;
                LearnOutcome::Evaluated(Box::new(report), change)
            }
            // Too few held-out rows to evaluate is a quiet outcome, not a failure.
            Err(Error::InvalidInput(message)) if message.contains("too few") || message.contains("held-out") => {
                LearnOutcome::TooFew {
                    usable,
                    needed: opts.min_rows.max(2),
                }
            }
            Err(e) => return Err(e),
        }
    };
    write_state(
        &opts.active,
        &LearnState {
            ran_at: crate::now_rfc3339(),
            watermark,
            outcome: outcome.describe(),
        },
    )?;
    Ok(outcome)
}

/// Installs the candidate as the challenger when the gate could not decide on it, and retires
/// the challenger when it did (promoted, or shown worse: the DR difference's two-sided 90%
/// interval lies below zero).
fn update_challenger(opts: &LearnOptions, report: &RunReport) -> Result<ChallengerChange> {
    let (Some(promotion), false, true) = (&report.promotion, opts.dry_run, opts.install_challenger) else {
        return Ok(ChallengerChange::Untouched);
    };
    let challenger = opts.challenger_dir();
    if undecided(promotion) {
        db::promote(&report.checkpoint, &challenger)?;
        // `promote` keeps the replaced checkpoint beside it; an old challenger is not worth keeping.
        let _ = std::fs::remove_dir_all(sibling(&challenger, "previous"));
        return Ok(ChallengerChange::Installed);
    }
    retire(&challenger)?;
    Ok(ChallengerChange::Retired)
}

/// Not promoted, and not shown worse either: the DR difference's 95% upper bound (the
/// mirror of the lower bound the gate uses) is at or above zero.
pub fn undecided(promotion: &db::PromotionRecord) -> bool {
    let ope = &promotion.ope;
    let upper = 2.0 * ope.dr_difference - ope.dr_difference_lcb95;
    !promotion.promoted && upper >= 0.0
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
