//! Learning from the gateway's own outcome log, and deciding whether the result may replace
//! the active checkpoint.
//!
//! Training rows: `request_log` joined with `feedback` (mean score per request). Only the
//! chosen model's outcome is observed, and the policy chose it with a logged propensity, so
//! the quality loss of each row is weighted by its clipped inverse propensity
//! min(1/p, [`IPS_CLIP`]); the loss is a weighted mean over the batch, i.e. a self-normalised
//! (SNIPS-style) clipped-IPS estimator of the full-information loss. Latency and output-token
//! heads learn from every successful row, with or without feedback (no selection weighting:
//! they describe the model, not the choice).
//!
//! Off-policy evaluation on held-out rows (the newest [`HOLDOUT_SHARE`] of the rated rows, by
//! time; unrated rows carry no reward and always train the latency and token heads): each policy
//! greedily picks the candidate with the best utility, where utility is the logged one with
//! its quality term replaced by the policy's own prediction (cost and latency terms as
//! logged). The reward is what the route optimises: the realised utility r = w_q·feedback −
//! w_c·cost − w_l·latency at the row's logged trade-off (quality alone for rows without one),
//! so a candidate that is as good for less money wins. Estimators:
//! - IPS: 1[π(x)=a]·min(1/p, clip)·r
//! - doubly robust: r̂(x, π(x)) + 1[π(x)=a]·min(1/p, clip)·(r − r̂(x, a)), with one reward
//!   model r̂ for both policies ([`RewardModel`]): the active checkpoint's predicted utility
//!   (where evidence is thin, the incumbent's beliefs keep the incumbent), or each model's mean
//!   outcome on the nearest rows it served before the rows being judged ([`NearestRows`]).
//!
//! Quality alone is estimated the same way and reported beside it.
//!
//! Promotion needs the paired per-row difference (new − active) of the DR utility estimate to
//! have a one-sided 95% lower confidence bound (mean − 1.645·s.e.), less the most clipping
//! could have added ([`OpeReport::clip_bias_allowance`]), above the margin.

use std::path::{Path, PathBuf};

use router_model::policy::{Price, Tradeoff};
use router_model::Prediction;
use router_model::{Checkpoint, RequestFeatures};
use router_model::outcome::{embedding_from_bytes, OutcomeRow};
use serde::Serialize;
use sqlx::FromRow as _;

use crate::error::{Error, Result};

/// Inverse propensities are clipped here (a propensity below 0.1 counts as 0.1).
pub const IPS_CLIP: f64 = 10.0;
/// Off-policy evaluation clips inverse propensities here; what clipping leaves out is charged
/// against the candidate ([`OpeReport::clip_bias_allowance`]). A clip of 50 charged less
/// (0.022 against 0.040 on the learning bench's 3-round log) but let a candidate trained on
/// signal-free feedback through the gate in a CI run (DR +0.147, bound +0.039): the few rows
/// that verify a rarely served pick then carry weights up to 50 and the interval misses it.
pub const OPE_CLIP: f64 = 10.0;
/// Share of logged rows, the newest, held out for off-policy evaluation.
pub const HOLDOUT_SHARE: f64 = 0.3;
/// z of a one-sided 95% bound.
const Z95: f64 = 1.645;

/// One logged candidate with the predictions it was scored with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedCandidate {
    pub model: String,
    pub quality: f64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub utility: f64,
    /// The model's price when the decision was made (rows logged before prices were logged
    /// have none: their cost and latency terms are taken as logged).
    pub price: Option<Price>,
    /// Probability the logging policy gave this candidate (its whole distribution is logged,
    /// so the chance it had of serving what another policy would pick is known exactly).
    pub probability: f64,
}

/// One request from the outcome log.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    pub id: String,
    pub created_at: String,
    /// The route it was sent to (`None`: a model named directly).
    pub route: Option<String>,
    /// The model that served it (configured name).
    pub model: String,
    pub candidates: Vec<LoggedCandidate>,
    /// Probability the policy gave `model`; `None` for fixed/default decisions.
    pub propensity: Option<f64>,
    pub embedding: Option<Vec<f32>>,
    pub prompt_text: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub latency_ms: f64,
    pub status: i64,
    /// Mean feedback score (0..1), if any arrived.
    pub feedback: Option<f64>,
    /// How many ratings arrived.
    pub feedback_count: i64,
    /// Realised cost of the answer (USD).
    pub cost_usd: Option<f64>,
    /// The trade-off the decision was made for (routed rows).
    pub tradeoff: Option<Tradeoff>,
}

impl LoggedRequest {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Features as the gateway computed them, as far as the log tells: from the prompt text
    /// when stored, with the logged exact token count.
    pub fn features(&self) -> RequestFeatures {
        let mut f = match &self.prompt_text {
            Some(text) => RequestFeatures::for_prompt(text),
            None => RequestFeatures {
                prompt_tokens: 0,
                turns: 1,
                has_code: false,
                has_tools: false,
                max_tokens: None,
            },
        };
        if let Some(t) = self.prompt_tokens.and_then(|t| u32::try_from(t).ok()) {
            f.prompt_tokens = t;
        }
        f
    }

    /// The route's utility of what was served: feedback quality, realised cost and latency.
    pub fn realised_utility(&self, tradeoff: Tradeoff) -> f64 {
        tradeoff.utility(self.feedback.unwrap_or(0.0), self.cost_usd.unwrap_or(0.0), self.latency_ms)
    }

    /// Clipped inverse propensity of the logged choice (training's clip).
    pub fn ips_weight(&self) -> f64 {
        self.ips_weight_clipped(IPS_CLIP)
    }

    /// Inverse propensity of the logged choice, clipped at `clip`.
    pub fn ips_weight_clipped(&self, clip: f64) -> f64 {
        self.propensity
            .filter(|p| p.is_finite() && *p > 0.0)
            .map_or(1.0, |p| (1.0 / p).min(clip))
    }
}

/// Reads logged requests (oldest first) with their mean feedback, from SQLite or Postgres.
/// `since` is an RFC 3339 time; rows before it are skipped.
pub async fn load_logged(url: &str, since: Option<&str>) -> Result<Vec<LoggedRequest>> {
    load_logged_routes(url, since, &[]).await
}

/// [`load_logged`], keeping only rows of `routes` (all rows when empty).
pub async fn load_logged_routes(url: &str, since: Option<&str>, routes: &[String]) -> Result<Vec<LoggedRequest>> {
    let mut rows = load_all(url, since).await?;
    if !routes.is_empty() {
        rows.retain(|r| r.route.as_ref().is_some_and(|route| routes.contains(route)));
    }
    Ok(rows)
}

/// Reads `request_log` as [`OutcomeRow`]s, the type the gateway writes, with each row's mean
/// feedback and number of ratings.
async fn load_all(url: &str, since: Option<&str>) -> Result<Vec<LoggedRequest>> {
    let since = match since {
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| Error::InvalidInput(format!("--since `{text}` is not an RFC 3339 time: {e}")))?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    let columns = router_model::outcome::COLUMNS.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ");
    let feedback = "(SELECT AVG(f.score) FROM feedback f WHERE f.request_id = r.id) AS feedback_mean, \
                    (SELECT COUNT(*) FROM feedback f WHERE f.request_id = r.id) AS feedback_count";
    // No index on `created_at` (the dashboard's windows go through the ids): this reads the whole
    // log, or most of it, so a scan is what an index would have led to anyway.
    if url.starts_with("postgres") {
        let sql = format!(
            "SELECT {columns}, {feedback} FROM request_log r \
             WHERE ($1::timestamptz IS NULL OR r.created_at >= $1) ORDER BY r.created_at, r.id"
        );
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await?;
        let rows = sqlx::query(&sql).bind(since).fetch_all(&pool).await;
        pool.close().await;
        rows?.iter().map(logged_from_row).collect()
    } else {
        let sql = format!(
            "SELECT {columns}, {feedback} FROM request_log r \
             WHERE (?1 IS NULL OR r.created_at >= ?1) ORDER BY r.created_at, r.id"
        );
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(url).await?;
        let rows = sqlx::query(&sql).bind(since).fetch_all(&pool).await;
        pool.close().await;
        rows?.iter().map(logged_from_row).collect()
    }
}

/// One database row as training sees it: the typed outcome row, then its feedback.
fn logged_from_row<'r, R>(row: &'r R) -> Result<LoggedRequest>
where
    R: sqlx::Row,
    OutcomeRow: sqlx::FromRow<'r, R>,
    Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r str: sqlx::ColumnIndex<R>,
{
    let outcome = OutcomeRow::from_row(row).map_err(|e| match e {
        sqlx::Error::ColumnDecode { index, source } => Error::InvalidInput(format!(
            "an outcome-log row does not match the format this build reads (column {index}): {source}; \
             rows written by another version of the gateway cannot be trained on"
        )),
        other => Error::Database(other),
    })?;
    let feedback: Option<f64> = row.try_get("feedback_mean")?;
    let feedback_count: i64 = row.try_get("feedback_count")?;
    Ok(LoggedRequest::from_outcome(outcome, feedback, feedback_count))
}

impl LoggedRequest {
    /// Training's view of a logged outcome.
    pub fn from_outcome(row: OutcomeRow, feedback: Option<f64>, feedback_count: i64) -> Self {
        let decision = row.candidates.unwrap_or_default();
        let tradeoff = decision.tradeoff.as_deref().and_then(|t| Tradeoff::parse_override(t, Tradeoff::BALANCED).ok());
        let candidates = decision
            .scores
            .into_iter()
            .map(|c| LoggedCandidate {
                model: c.model,
                quality: c.quality,
                cost_usd: c.cost_usd,
                latency_ms: c.latency_ms,
                utility: c.utility,
                price: Some(Price { input_usd_per_mtok: c.input_usd_per_mtok, output_usd_per_mtok: c.output_usd_per_mtok }),
                probability: c.probability,
            })
            .collect();
        Self {
            id: row.id.simple().to_string(),
            created_at: row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            route: row.route,
            model: row.model,
            candidates,
            propensity: row.propensity,
            embedding: row.embedding.as_deref().and_then(embedding_from_bytes),
            prompt_text: row.prompt_text,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
            latency_ms: row.latency_ms,
            status: i64::from(row.status),
            feedback,
            feedback_count,
            cost_usd: row.cost_usd,
            tradeoff,
        }
    }
}

/// Splits logged rows by time: the newest `HOLDOUT_SHARE` of the rated rows evaluate, every
/// other row trains. Unrated rows (no reward to evaluate with) always train, so a burst of
/// unrated traffic cannot push the rated rows out of the evaluation.
pub fn time_split(rows: &[LoggedRequest]) -> (Vec<&LoggedRequest>, Vec<&LoggedRequest>) {
    let mut rated: Vec<&LoggedRequest> = rows.iter().filter(|r| r.feedback.is_some()).collect();
    rated.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let cut = ((rated.len() as f64) * (1.0 - HOLDOUT_SHARE)).round() as usize;
    let held = rated.split_off(cut.min(rated.len()));
    let held_ids: std::collections::HashSet<&str> = held.iter().map(|r| r.id.as_str()).collect();
    let mut train: Vec<&LoggedRequest> = rows.iter().filter(|r| !held_ids.contains(r.id.as_str())).collect();
    train.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    (train, held)
}

/// Maps a logged (configured) model name to a head of `candidates`: exact, then canonical.
pub fn head_of(candidates: &[String], model: &str) -> Option<usize> {
    candidates
        .iter()
        .position(|c| c == model)
        .or_else(|| {
            let canonical = router_model::canonical_model_id(model);
            candidates.iter().position(|c| *c == canonical)
        })
}

/// What the doubly robust estimate fills in for a policy's pick where the log did not serve
/// it. DR is unbiased with any reward model fixed apart from the rows judged; a closer one
/// leaves less for the inverse-propensity correction, so the interval narrows.
#[derive(Clone, Copy)]
pub enum RewardModel<'a> {
    /// The active checkpoint's heads, its output tokens recalibrated on the judged rows
    /// (cross-fitted). Where the log holds little evidence its beliefs argue for the active
    /// policy, so thin evidence keeps the incumbent.
    ActiveHeads,
    /// Each model's mean outcome on the nearest rows it served before the judged rows; the
    /// active checkpoint's heads for a model that served too few.
    NearestRows(&'a NearestRows),
}

/// Outcomes each model served, indexed by the logged prompt embedding: a reward model that
/// belongs to neither policy. Why: the challenger's own heads measured closer to the truth on
/// the learning bench but let a no-better challenger through the synthetic null 27 times in
/// 300 (a challenger trained on noise believes its noise); the active checkpoint's heads are
/// safe but, for a weak start, far off (its predicted cost of gpt-4 on ARC was 2.7 times what
/// the log billed), which is most of the gate's interval. The neighbours' mean is what the log
/// itself says; where it holds no signal that mean is the same for every model and argues for
/// neither policy.
pub struct NearestRows {
    dim: usize,
    /// Per model, sorted by name.
    by_model: Vec<(String, ServedRows)>,
}

/// One model's served rows: unit-length embeddings, flattened, beside their outcomes.
#[derive(Default)]
struct ServedRows {
    embeddings: Vec<f32>,
    outcomes: Vec<Outcome>,
}

#[derive(Clone, Copy)]
struct Outcome {
    quality: f64,
    cost_usd: f64,
    latency_ms: f64,
}

/// The mean outcome a model's neighbours give: quality, cost and latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourEstimate {
    pub quality: f64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub neighbours: usize,
}

impl NearestRows {
    /// Neighbours averaged per estimate: as many as the learner smooths its targets over.
    pub const NEIGHBOURS: usize = crate::train::DEFAULT_LOG_LABEL_NEIGHBOURS;
    /// A model with fewer served rows is left to the active checkpoint's heads.
    pub const MIN_SERVED: usize = 20;
    /// The newest rows kept per model, bounding the cost of a judgement on a long log.
    pub const MAX_SERVED: usize = 20_000;

    /// Indexes the rated, successful rows with a `dim`-sized embedding, newest kept where a
    /// model served more than [`Self::MAX_SERVED`] (rows are taken oldest first).
    pub fn from_rows<'r>(rows: impl IntoIterator<Item = &'r LoggedRequest>, dim: usize) -> Self {
        let mut served: std::collections::HashMap<String, Vec<(&'r [f32], Outcome)>> = std::collections::HashMap::new();
        for row in rows {
            let (Some(quality), Some(embedding)) = (row.feedback, row.embedding.as_deref()) else { continue };
            if !row.succeeded() || embedding.len() != dim {
                continue;
            }
            let outcome = Outcome { quality, cost_usd: row.cost_usd.unwrap_or(0.0), latency_ms: row.latency_ms };
            served.entry(row.model.clone()).or_default().push((embedding, outcome));
        }
        let mut by_model: Vec<(String, ServedRows)> = served
            .into_iter()
            .map(|(model, rows)| {
                let kept = &rows[rows.len().saturating_sub(Self::MAX_SERVED)..];
                let index = ServedRows {
                    embeddings: crate::neighbours::unit_length(kept.iter().map(|(e, _)| *e)),
                    outcomes: kept.iter().map(|(_, o)| *o).collect(),
                };
                (model, index)
            })
            .collect();
        by_model.sort_by(|a, b| a.0.cmp(&b.0));
        Self { dim, by_model }
    }

    /// Rows indexed, over all models.
    pub fn len(&self) -> usize {
        self.by_model.iter().map(|(_, m)| m.outcomes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For each of `embeddings` (in order; `None` or another size: no estimate), the mean
    /// outcome of the rows nearest it (cosine) that each model served: [`Self::NEIGHBOURS`], at
    /// most a fifth of that model's rows ([`crate::neighbours::neighbourhood`]); no estimate
    /// for a model that served fewer than [`Self::MIN_SERVED`]. One matrix product per model
    /// in blocks of rows, so a judgement on a long log stays seconds, not minutes.
    pub fn estimate_rows(&self, embeddings: &[Option<&[f32]>]) -> Result<NeighbourEstimates> {
        let mut by_row = vec![vec![None; self.by_model.len()]; embeddings.len()];
        let fits: Vec<(usize, &[f32])> = embeddings.iter().enumerate().filter_map(|(i, e)| e.filter(|e| e.len() == self.dim && self.dim > 0).map(|e| (i, e))).collect();
        if fits.is_empty() {
            return Ok(NeighbourEstimates { models: self.models(), by_row });
        }
        let queries: Vec<f32> = fits.iter().flat_map(|(_, e)| e.iter().copied()).collect();
        let queries = candle_core::Tensor::from_vec(queries, (fits.len(), self.dim), &candle_core::Device::Cpu)?;
        for (m, (_, served)) in self.by_model.iter().enumerate() {
            let n = served.outcomes.len();
            if n < Self::MIN_SERVED {
                continue;
            }
            let k = crate::neighbours::neighbourhood(Self::NEIGHBOURS, n);
            let reference = candle_core::Tensor::from_slice(&served.embeddings, (n, self.dim), &candle_core::Device::Cpu)?;
            crate::neighbours::each_nearest(&queries, &reference, k, |q, nearest| {
                let mean = |f: fn(&Outcome) -> f64| nearest.iter().map(|&i| f(&served.outcomes[i as usize])).sum::<f64>() / k as f64;
                by_row[fits[q].0][m] = Some(NeighbourEstimate {
                    quality: mean(|o| o.quality),
                    cost_usd: mean(|o| o.cost_usd),
                    latency_ms: mean(|o| o.latency_ms),
                    neighbours: k,
                });
            })?;
        }
        Ok(NeighbourEstimates { models: self.models(), by_row })
    }

    fn models(&self) -> Vec<String> {
        self.by_model.iter().map(|(model, _)| model.clone()).collect()
    }
}

/// [`NearestRows::estimate_rows`]' answer: per row, per model.
#[derive(Debug, Clone, Default)]
pub struct NeighbourEstimates {
    models: Vec<String>,
    by_row: Vec<Vec<Option<NeighbourEstimate>>>,
}

impl NeighbourEstimates {
    /// Row `row`'s estimate for `model`, if there is one.
    pub fn get(&self, row: usize, model: &str) -> Option<NeighbourEstimate> {
        let m = self.models.iter().position(|c| c == model)?;
        self.by_row.get(row)?.get(m).copied().flatten()
    }
}

impl OpeReport {
    /// The paired DR utility difference new − active with its two-sided 95% interval: what a
    /// promotion claims, to hold against the gain the promoted checkpoint then realises.
    pub fn dr_difference_interval95(&self) -> (f64, f64, f64) {
        let se = self.dr_difference_se();
        (self.dr_difference, self.dr_difference - 1.96 * se, self.dr_difference + 1.96 * se)
    }

    /// Standard error of the paired DR utility difference.
    pub fn dr_difference_se(&self) -> f64 {
        (self.dr_difference - self.dr_difference_lcb95) / Z95
    }

    /// The gate's lower bound with `z` standard errors in place of one look's 1.645 (a
    /// challenger that may be judged again pays for the extra looks), less the clipping charge.
    pub fn gate_lower_bound_at(&self, z: f64) -> f64 {
        self.dr_difference - z * self.dr_difference_se() - self.clip_bias_allowance
    }
}

/// One policy's value on the held-out rows, under each estimator.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyValue {
    /// Quality (the feedback score) the policy would get.
    pub ips: f64,
    pub doubly_robust: f64,
    /// Standard error of the DR quality estimate (its 95% interval is ±1.96 of it).
    pub doubly_robust_se: f64,
    /// The routes' objective: quality − cost − latency at each row's trade-off, with the
    /// realised cost and latency of the logged answer.
    pub utility_ips: f64,
    pub utility_dr: f64,
    pub utility_dr_se: f64,
    /// Share of rows where the policy agrees with the logged choice.
    pub agreement: f64,
}

/// The comparison and the decision.
#[derive(Debug, Clone, Serialize)]
pub struct OpeReport {
    pub rows: usize,
    pub estimator: String,
    pub ips_clip: f64,
    pub new: PolicyValue,
    pub active: PolicyValue,
    /// Mean paired difference new − active of the DR utility estimate, and its one-sided 95%
    /// lower bound: what promotion is decided on.
    pub dr_difference: f64,
    pub dr_difference_lcb95: f64,
    /// Clipping leaves part of the DR correction out wherever the logging policy gave the
    /// candidate a policy picks less than 1/clip: there the estimate leans on the reward model
    /// (an overconfident one flatters whatever it cannot check). This is the most that could
    /// have added to the difference (quality anywhere in 0..1 where it was not verified),
    /// averaged over rows; promotion subtracts it from the lower bound.
    pub clip_bias_allowance: f64,
    /// `dr_difference_lcb95 − clip_bias_allowance`: what promotion is decided on.
    pub gate_lower_bound: f64,
    /// Rows where the two policies pick differently: the only rows where the difference is
    /// not zero.
    pub disagreements: usize,
    /// Of those, rows the log served with the new policy's pick / the active one's: the
    /// evidence that corrects each side's reward-model guess.
    pub verified_new: usize,
    pub verified_active: usize,
    pub ips_difference: f64,
    pub ips_difference_lcb95: f64,
    /// The same paired DR difference in quality alone (a cheaper policy may trade some).
    pub quality_dr_difference: f64,
    pub margin: f64,
    pub better: bool,
}

/// A policy's predictions for every head of its checkpoint on one row.
pub type PredictFn<'a> = dyn Fn(&LoggedRequest) -> Result<Vec<Prediction>> + 'a;

/// (quality, utility) a policy predicts for each logged candidate, as the gateway would score
/// it with that policy's checkpoint: its quality, its output tokens at the logged price, its
/// latency. Candidates logged without a price, and models the checkpoint has no head for,
/// keep the logged terms (with the quality replaced where there is a head).
fn predicted_utilities(row: &LoggedRequest, tradeoff: Tradeoff, predictions: &[Prediction], candidates: &[String]) -> Vec<(f64, f64)> {
    let prompt_tokens = u64::from(row.features().prompt_tokens);
    row.candidates
        .iter()
        .map(|c| match (head_of(candidates, &c.model).and_then(|h| predictions.get(h)), c.price) {
            (Some(p), Some(price)) => {
                let q = f64::from(p.quality);
                let cost = price.cost_usd(prompt_tokens, p.output_tokens.max(0.0).round() as u64);
                (q, tradeoff.utility(q, cost, f64::from(p.latency_ms)))
            }
            (Some(p), None) => {
                let q = f64::from(p.quality);
                (q, c.utility + tradeoff.quality * (q - c.quality))
            }
            (None, _) => (c.quality, c.utility),
        })
        .collect()
}

/// Rows a model must have served in the other half before its output-token prediction is
/// recalibrated there (fewer: the checkpoint's prediction stands).
const MIN_CALIBRATION_ROWS: usize = 20;

/// The reward model's output tokens, recalibrated on the log: per head, realised ÷ predicted
/// output tokens over the rows that model served, **cross-fitted** (a row's factor comes from
/// the other half of the rows, by index parity), so no row's own outcome corrects its guess.
/// A checkpoint trained on other traffic can mispredict answer lengths badly (on the learning
/// bench the weak start predicted gpt-3.5's cost per request at twice what it billed); the
/// cost term of every pick the log did not serve then carries that error straight into the
/// estimate, on the side of whichever policy saves more.
fn output_token_scales(rows: &[&&LoggedRequest], predictions: &[Vec<Prediction>], candidates: &[String]) -> [Vec<f64>; 2] {
    // Per half, per head: (realised tokens, predicted tokens, rows).
    let mut sums = [vec![(0.0, 0.0, 0usize); candidates.len()], vec![(0.0, 0.0, 0usize); candidates.len()]];
    for (i, (row, predicted)) in rows.iter().zip(predictions).enumerate() {
        let (Some(head), Some(realised)) = (head_of(candidates, &row.model), row.completion_tokens) else { continue };
        let Some(p) = predicted.get(head) else { continue };
        let entry = &mut sums[i % 2][head];
        entry.0 += realised.max(0) as f64;
        entry.1 += f64::from(p.output_tokens.max(0.0));
        entry.2 += 1;
    }
    let scales = |half: &[(f64, f64, usize)]| -> Vec<f64> {
        half.iter()
            .map(|&(realised, predicted, n)| if n >= MIN_CALIBRATION_ROWS && predicted > 0.0 { (realised / predicted).clamp(0.1, 10.0) } else { 1.0 })
            .collect()
    };
    // Rows of half 0 take the other half's factors, and the other way round.
    [scales(&sums[1]), scales(&sums[0])]
}

fn argmax(values: &[(f64, f64)]) -> Option<usize> {
    values.iter().enumerate().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|(i, _)| i)
}

/// Off-policy evaluation of `new` against `active` (each: candidate ids + quality function)
/// on `rows`. Each policy greedily picks the candidate of best predicted utility; its value
/// is estimated for the realised utility (and quality) by IPS and by doubly robust with
/// `reward` as the reward model.
pub fn evaluate_policies(
    rows: &[&LoggedRequest],
    new_candidates: &[String],
    new_predict: &PredictFn<'_>,
    active_candidates: &[String],
    active_predict: &PredictFn<'_>,
    reward: RewardModel<'_>,
    margin: f64,
) -> Result<OpeReport> {
    let usable: Vec<&&LoggedRequest> = rows
        .iter()
        .filter(|r| r.feedback.is_some() && r.candidates.len() >= 2 && r.propensity.is_some_and(|p| p > 0.0))
        .collect();
    // Per row: [ips_q, dr_q, ips_u, dr_u] for new, then for active.
    let mut contributions: Vec<[f64; 8]> = Vec::new();
    // Summed over rows: how far clipping could have biased the utility difference towards `new`.
    let mut allowance_sum = 0.0;
    let (mut disagreements, mut verified_new, mut verified_active) = (0usize, 0usize, 0usize);
    let (mut agree_new, mut agree_active) = (0usize, 0usize);
    let active_predictions = usable.iter().map(|row| active_predict(row)).collect::<Result<Vec<_>>>()?;
    let token_scales = output_token_scales(&usable, &active_predictions, active_candidates);
    let neighbour_estimates = match reward {
        RewardModel::ActiveHeads => NeighbourEstimates::default(),
        RewardModel::NearestRows(nearest) => nearest.estimate_rows(&usable.iter().map(|r| r.embedding.as_deref()).collect::<Vec<_>>())?,
    };
    for (i, (row, q_active)) in usable.iter().zip(&active_predictions).enumerate() {
        let quality = row.feedback.unwrap_or(0.0);
        let tradeoff = row.tradeoff.unwrap_or(Tradeoff::BEST);
        let utility = row.realised_utility(tradeoff);
        let w = row.ips_weight_clipped(OPE_CLIP);
        let q_new = new_predict(row)?;
        // The reward model, for both policies. DR is unbiased whatever the reward model, but
        // where the log rarely served the new pick the estimate leans on it. The active
        // checkpoint's beliefs then argue for the active policy (which maximises them), so
        // thin evidence keeps the incumbent: in `gate_calibration` a no-better candidate
        // passed the 95% bound in 11 of 300 trials with these beliefs, 25 with the new
        // checkpoint's own, 21 with their mean. Its output tokens (so its cost) are
        // recalibrated on the log; its quality is not. The nearest earlier rows replace it
        // for every model that served enough of them.
        let calibrated: Vec<Prediction> = q_active
            .iter()
            .enumerate()
            .map(|(h, p)| Prediction { output_tokens: p.output_tokens * token_scales[i % 2].get(h).copied().unwrap_or(1.0) as f32, ..p.clone() })
            .collect();
        let mut hat = predicted_utilities(row, tradeoff, &calibrated, active_candidates);
        for (estimate, c) in hat.iter_mut().zip(&row.candidates) {
            if let Some(n) = neighbour_estimates.get(i, &c.model) {
                *estimate = (n.quality, tradeoff.utility(n.quality, n.cost_usd, n.latency_ms));
            }
        }
        let Some(logged) = row.candidates.iter().position(|c| c.model == row.model) else { continue };
        let (logged_q_hat, logged_u_hat) = hat[logged];
        let mut values = [0.0; 8];
        let mut picks = [None; 2];
        for (k, (candidates, q)) in [(new_candidates, &q_new), (active_candidates, q_active)].into_iter().enumerate() {
            let Some(pick) = argmax(&predicted_utilities(row, tradeoff, q, candidates)) else { continue };
            picks[k] = Some(pick);
            let matches = pick == logged;
            if matches {
                if k == 0 {
                    agree_new += 1;
                } else {
                    agree_active += 1;
                }
            }
            let indicator = if matches { w } else { 0.0 };
            let (q_hat, u_hat) = hat[pick];
            values[4 * k] = indicator * quality;
            values[4 * k + 1] = q_hat + indicator * (quality - logged_q_hat);
            values[4 * k + 2] = indicator * utility;
            values[4 * k + 3] = u_hat + indicator * (utility - logged_u_hat);
        }
        if let [Some(new_pick), Some(active_pick)] = picks {
            if new_pick != active_pick {
                disagreements += 1;
                verified_new += usize::from(new_pick == logged);
                verified_active += usize::from(active_pick == logged);
                let mass = |pick: usize| row.candidates.get(pick).map_or(0.0, |c| c.probability);
                let unverified = |pick: usize| 1.0 - (OPE_CLIP * mass(pick)).clamp(0.0, 1.0);
                let q_hat = |pick: usize| hat[pick].0.clamp(0.0, 1.0);
                allowance_sum += tradeoff.quality * (unverified(new_pick) * q_hat(new_pick) + unverified(active_pick) * (1.0 - q_hat(active_pick)));
            }
        }
        contributions.push(values);
    }
    let n = contributions.len();
    if n < 2 {
        return Err(Error::InvalidInput(format!(
            "{n} held-out logged rows with feedback, propensity and ≥2 candidates: too few to evaluate"
        )));
    }
    let column = |k: usize| contributions.iter().map(|c| c[k]).collect::<Vec<_>>();
    let diff = |a: usize, b: usize| contributions.iter().map(|c| c[a] - c[b]).collect::<Vec<_>>();
    let (dr_mean, dr_se) = mean_se(&diff(3, 7));
    let (ips_mean, ips_se) = mean_se(&diff(2, 6));
    let value = |k: usize, agree: usize| {
        let (dr_q, dr_q_se) = mean_se(&column(4 * k + 1));
        let (dr_u, dr_u_se) = mean_se(&column(4 * k + 3));
        PolicyValue {
            ips: mean_se(&column(4 * k)).0,
            doubly_robust: dr_q,
            doubly_robust_se: dr_q_se,
            utility_ips: mean_se(&column(4 * k + 2)).0,
            utility_dr: dr_u,
            utility_dr_se: dr_u_se,
            agreement: agree as f64 / n as f64,
        }
    };
    let lcb = dr_mean - Z95 * dr_se;
    let clip_bias_allowance = allowance_sum / n as f64;
    let gate_lower_bound = lcb - clip_bias_allowance;
    Ok(OpeReport {
        rows: n,
        estimator: format!(
            "doubly robust on the routes' utility (reward model: {}), clipped IPS weights min(1/p, {OPE_CLIP})",
            match reward {
                RewardModel::ActiveHeads => "the active checkpoint's heads, its output tokens recalibrated per model on the other half of the rows".to_owned(),
                RewardModel::NearestRows(nearest) => format!(
                    "each model's mean outcome on the {} nearest of the {} earlier rows served, the active checkpoint's heads for a model that served fewer than {}",
                    NearestRows::NEIGHBOURS,
                    nearest.len(),
                    NearestRows::MIN_SERVED
                ),
            }
        ),
        ips_clip: OPE_CLIP,
        new: value(0, agree_new),
        active: value(1, agree_active),
        dr_difference: dr_mean,
        dr_difference_lcb95: lcb,
        clip_bias_allowance,
        gate_lower_bound,
        disagreements,
        verified_new,
        verified_active,
        ips_difference: ips_mean,
        ips_difference_lcb95: ips_mean - Z95 * ips_se,
        quality_dr_difference: mean_se(&diff(1, 5)).0,
        margin,
        better: gate_lower_bound > margin,
    })
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (0.0, f64::INFINITY);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n).sqrt())
}

/// A promotion decision, appended to `<active>.promotions.jsonl` beside the checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct PromotionRecord {
    pub decided_at: String,
    pub candidate_checkpoint: String,
    pub active_checkpoint: String,
    pub promoted: bool,
    pub reason: String,
    pub ope: OpeReport,
}

/// Where decisions about `active` are recorded.
pub fn promotion_log(active: &Path) -> PathBuf {
    let name = active.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    active.with_file_name(format!("{name}.promotions.jsonl"))
}

/// Appends `record` to the promotion log.
pub fn record_decision(active: &Path, record: &PromotionRecord) -> Result<PathBuf> {
    use std::io::Write;
    let path = promotion_log(active);
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_all()))
        .map_err(|e| Error::io(format!("appending to {}", path.display()), e))?;
    Ok(path)
}

/// Replaces the checkpoint directory `active` with a copy of `candidate` in one step: the
/// copy is written to a temporary sibling, then swapped in with `renameat2(RENAME_EXCHANGE)`
/// (Linux), so a reader sees either the old or the new directory, never none; elsewhere two
/// renames. The previous checkpoint is kept as `<active>.previous`.
pub fn promote(candidate: &Path, active: &Path) -> Result<()> {
    let parent = active.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = active.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = parent.join(format!(".{name}.promote-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    for file in [router_model::checkpoint::WEIGHTS_FILE, router_model::checkpoint::META_FILE] {
        let (from, to) = (candidate.join(file), tmp.join(file));
        std::fs::copy(&from, &to).map_err(|e| Error::io(format!("copying {}", from.display()), e))?;
        std::fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", to.display()), e))?;
    }
    // The copy must load before it may replace anything.
    let meta = Checkpoint::read_meta(&tmp)?;
    Checkpoint::load(&tmp, &meta.embedder.id, meta.embedder.dim)?;
    let previous = parent.join(format!("{name}.previous"));
    if active.exists() {
        if exchange(&tmp, active).is_ok() {
            let _ = std::fs::remove_dir_all(&previous);
            std::fs::rename(&tmp, &previous).map_err(|e| Error::io(format!("keeping {}", previous.display()), e))?;
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&previous);
        std::fs::rename(active, &previous).map_err(|e| Error::io(format!("moving aside {}", active.display()), e))?;
    }
    std::fs::rename(&tmp, active).map_err(|e| Error::io(format!("renaming into {}", active.display()), e))?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("no atomic exchange on this platform"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate as logged: its predicted quality and the probability the policy gave it
    /// (prices zero, so utility is quality).
    pub(super) fn candidate(model: &str, quality: f64, probability: f64) -> LoggedCandidate {
        LoggedCandidate {
            model: model.into(),
            quality,
            cost_usd: 0.0,
            latency_ms: 0.0,
            utility: quality,
            price: Some(Price { input_usd_per_mtok: 0.0, output_usd_per_mtok: 0.0 }),
            probability,
        }
    }

    /// A rated row at a quality-only trade-off: `served` was chosen with `propensity`.
    pub(super) fn rated(id: String, order: usize, served: &str, candidates: Vec<LoggedCandidate>, propensity: f64, feedback: f64) -> LoggedRequest {
        LoggedRequest {
            id,
            created_at: format!("{order:06}"),
            route: Some("auto".into()),
            model: served.into(),
            candidates,
            propensity: Some(propensity),
            embedding: None,
            prompt_text: None,
            prompt_tokens: Some(10),
            completion_tokens: Some(10),
            latency_ms: 0.0,
            status: 200,
            feedback: Some(feedback),
            feedback_count: 1,
            cost_usd: Some(0.0),
            tradeoff: Some(Tradeoff { quality: 1.0, cost: 0.0, latency: 0.0 }),
        }
    }

    /// Rows logged by a policy that served "a" 99.5% of the time; "b" (0.5%) always got 0,
    /// "a" always got 0.5.
    fn rows(n: usize) -> Vec<LoggedRequest> {
        (0..n)
            .map(|i| {
                let explored = i % 200 == 0;
                let candidates = vec![candidate("a", 0.5, 0.995), candidate("b", 0.5, 0.005)];
                let (served, propensity, feedback) = if explored { ("b", 0.005, 0.0) } else { ("a", 0.995, 0.5) };
                rated(format!("{i}"), i, served, candidates, propensity, feedback)
            })
            .collect()
    }

    fn predicts(a: f32, b: f32) -> impl Fn(&LoggedRequest) -> Result<Vec<Prediction>> {
        move |_| {
            Ok(["a", "b"]
                .iter()
                .zip([a, b])
                .map(|(m, q)| Prediction { model_id: (*m).into(), quality: q, latency_ms: 0.0, output_tokens: 0.0 })
                .collect())
        }
    }

    /// An overconfident active checkpoint (a 0.9, b 0.8; truly 0.5 and 0) is the reward
    /// model; the candidate picks "b" everywhere, which the log served too rarely (0.5%) for the
    /// clipped correction to bring its estimate down to the truth, so the plain DR bound calls
    /// it better. The gate charges the unverified mass and refuses it.
    #[test]
    fn a_candidate_the_log_cannot_check_is_not_promoted_on_belief() {
        let log = rows(4000);
        let held: Vec<&LoggedRequest> = log.iter().collect();
        let candidates = vec!["a".to_owned(), "b".to_owned()];
        let report = evaluate_policies(&held, &candidates, &predicts(0.1, 0.9), &candidates, &predicts(0.9, 0.8), RewardModel::ActiveHeads, 0.0).expect("evaluated");
        // Truth: new serves "b" (0.0), active serves "a" (0.5).
        assert!(report.dr_difference_lcb95 > 0.0, "the clipped DR alone is fooled: {report:?}");
        assert!(report.clip_bias_allowance > report.dr_difference_lcb95, "{report:?}");
        assert!(!report.better, "{report:?}");
    }

    /// Where the log explored enough, nothing is charged and a truly better candidate passes.
    #[test]
    fn a_candidate_the_log_can_check_is_charged_nothing() {
        let mut log = rows(2000);
        for (i, row) in log.iter_mut().enumerate() {
            let explored = i % 2 == 0;
            row.candidates = vec![candidate("a", 0.5, 0.5), candidate("b", 0.5, 0.5)];
            row.model = if explored { "b" } else { "a" }.into();
            row.propensity = Some(0.5);
            row.feedback = Some(if explored { 0.9 } else { 0.5 });
        }
        let held: Vec<&LoggedRequest> = log.iter().collect();
        let candidates = vec!["a".to_owned(), "b".to_owned()];
        let report = evaluate_policies(&held, &candidates, &predicts(0.1, 0.9), &candidates, &predicts(0.6, 0.1), RewardModel::ActiveHeads, 0.0).expect("evaluated");
        assert_eq!(report.clip_bias_allowance, 0.0);
        assert!(report.better && (report.dr_difference - 0.4).abs() < 0.05, "{report:?}");
    }

    /// The active checkpoint predicts four times the output tokens both models bill (200 vs
    /// 50). The candidate picks the cheap "b" everywhere, which the log served on 1% of
    /// rows; its cost there is the reward model's guess. Recalibrated on the rows each model
    /// served (the other half's), the guess is the billed 50 tokens and the estimate is the
    /// true saving, 0.05 × 1000 × 50 × (30 − 2) / 1e6 = 0.07 (uncalibrated: 0.055).
    #[test]
    fn the_reward_models_cost_follows_what_the_log_billed() {
        let price = |output: f64| Some(Price { input_usd_per_mtok: 0.0, output_usd_per_mtok: output });
        let log: Vec<LoggedRequest> = (0..8000)
            .map(|i| {
                // 1% explored, on even and odd rows alike (each half calibrates the other).
                let explored = i % 200 == 0 || i % 200 == 101;
                let mut a = candidate("a", 0.5, 0.99);
                a.price = price(30.0);
                let mut b = candidate("b", 0.5, 0.01);
                b.price = price(2.0);
                let (served, propensity, output_price) = if explored { ("b", 0.01, 2.0) } else { ("a", 0.99, 30.0) };
                let mut row = rated(format!("{i}"), i, served, vec![a, b], propensity, 0.5);
                row.prompt_tokens = Some(0);
                row.completion_tokens = Some(50);
                row.cost_usd = Some(50.0 * output_price / 1e6);
                row.tradeoff = Some(Tradeoff { quality: 1.0, cost: 0.05, latency: 0.0 });
                row
            })
            .collect();
        let held: Vec<&LoggedRequest> = log.iter().collect();
        let candidates = vec!["a".to_owned(), "b".to_owned()];
        let predicting = |qa: f32, qb: f32| {
            move |_: &LoggedRequest| -> Result<Vec<Prediction>> {
                Ok([("a", qa), ("b", qb)].iter().map(|(m, q)| Prediction { model_id: (*m).into(), quality: *q, latency_ms: 0.0, output_tokens: 200.0 }).collect())
            }
        };
        // The active checkpoint overrates "a" (0.9; truly 0.5, like "b"), so it serves "a".
        let report = evaluate_policies(&held, &candidates, &predicting(0.1, 0.9), &candidates, &predicting(0.9, 0.5), RewardModel::ActiveHeads, 0.0).expect("evaluated");
        assert!((report.dr_difference - 0.07).abs() < 0.003, "{report:?}");
    }

    #[test]
    fn output_tokens_are_recalibrated_from_the_other_half_only_where_a_model_served_enough() {
        let rows: Vec<LoggedRequest> = (0..100)
            .map(|i| {
                // "a" served every row; even rows billed 40 tokens, odd rows 80.
                let mut row = rated(format!("{i}"), i, "a", vec![candidate("a", 0.5, 0.9), candidate("b", 0.5, 0.1)], 0.9, 1.0);
                row.completion_tokens = Some(if i % 2 == 0 { 40 } else { 80 });
                row
            })
            .collect();
        let refs: Vec<&LoggedRequest> = rows.iter().collect();
        let usable: Vec<&&LoggedRequest> = refs.iter().collect();
        let predictions: Vec<Vec<Prediction>> = (0..100)
            .map(|_| ["a", "b"].iter().map(|m| Prediction { model_id: (*m).into(), quality: 0.5, latency_ms: 0.0, output_tokens: 20.0 }).collect())
            .collect();
        let candidates = vec!["a".to_owned(), "b".to_owned()];
        let [even, odd] = output_token_scales(&usable, &predictions, &candidates);
        // Even rows are corrected by what the odd rows billed, and the other way round.
        assert_eq!(even, vec![4.0, 1.0]);
        assert_eq!(odd, vec![2.0, 1.0]);
        // Fewer than MIN_CALIBRATION_ROWS in a half: the prediction stands.
        let few = &usable[..2 * MIN_CALIBRATION_ROWS - 2];
        let [even, odd] = output_token_scales(few, &predictions, &candidates);
        assert_eq!((even, odd), (vec![1.0, 1.0], vec![1.0, 1.0]));
    }

    /// A row served by `model` at `embedding` with `feedback`, billed `cost`.
    fn served_at(i: usize, model: &str, embedding: Vec<f32>, feedback: f64, cost: f64) -> LoggedRequest {
        let mut row = rated(format!("{i}"), i, model, vec![candidate("a", 0.5, 0.5), candidate("b", 0.5, 0.5)], 0.5, feedback);
        row.embedding = Some(embedding);
        row.cost_usd = Some(cost);
        row
    }

    #[test]
    fn nearest_rows_average_the_closest_rows_a_model_served() {
        // "a" served 200 rows: 100 near [1, 0] rated 1 (billed 0.002), 100 near [0, 1] rated 0.
        // "b" served 10 (too few to estimate); a failed and an unrated row are not indexed.
        let mut rows: Vec<LoggedRequest> = (0..200)
            .map(|i| {
                let jitter = (i % 7) as f32 * 0.01;
                if i % 2 == 0 { served_at(i, "a", vec![1.0, jitter], 1.0, 0.002) } else { served_at(i, "a", vec![jitter, 2.0], 0.0, 0.0) }
            })
            .collect();
        rows.extend((200..210).map(|i| served_at(i, "b", vec![1.0, 0.0], 1.0, 0.0)));
        let mut failed = served_at(210, "a", vec![1.0, 0.0], 0.0, 0.0);
        failed.status = 500;
        let mut unrated = served_at(211, "a", vec![1.0, 0.0], 0.0, 0.0);
        unrated.feedback = None;
        rows.extend([failed, unrated]);
        let nearest = NearestRows::from_rows(&rows, 2);
        assert_eq!(nearest.len(), 210);
        let queries: [Option<&[f32]>; 5] = [Some(&[3.0, 0.1]), Some(&[0.0, 1.0]), Some(&[1.0, 0.0]), Some(&[1.0, 0.0, 0.0]), None];
        let estimates = nearest.estimate_rows(&queries).expect("estimated");
        let near_first = estimates.get(0, "a").expect("a served enough");
        assert_eq!(near_first.neighbours, NearestRows::NEIGHBOURS);
        assert!((near_first.quality - 1.0).abs() < 1e-9 && (near_first.cost_usd - 0.002).abs() < 1e-12, "{near_first:?}");
        assert_eq!(estimates.get(1, "a").map(|e| e.quality), Some(0.0));
        assert_eq!(estimates.get(2, "b"), None, "10 rows are too few");
        assert_eq!(estimates.get(2, "c"), None);
        assert_eq!(estimates.get(3, "a"), None, "embedding of another size");
        assert_eq!(estimates.get(4, "a"), None, "no embedding");
        assert_eq!(estimates.get(5, "a"), None, "no such row");
        // A model that served 50 rows is averaged over at most a fifth of them.
        let few = NearestRows::from_rows(&rows[..50], 2);
        assert_eq!(few.estimate_rows(&queries[2..3]).expect("estimated").get(0, "a").map(|e| e.neighbours), Some(10));
    }

    #[test]
    fn clips_inverse_propensity() {
        let mut r = rated("x".into(), 0, "a", vec![], 0.01, 0.0);
        assert_eq!(r.ips_weight(), IPS_CLIP);
        r.propensity = Some(0.5);
        assert_eq!(r.ips_weight(), 2.0);
        r.propensity = None;
        assert_eq!(r.ips_weight(), 1.0);
    }
}

#[cfg(test)]
mod gate_calibration {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};

    use super::tests::{candidate, rated};
    use super::*;

    const MODELS: [&str; 3] = ["a", "b", "c"];

    /// One trial: `n` rows logged by a policy that serves its favourite with probability 0.7
    /// and each other model with 0.15; every answer is rated a fair coin, whatever the model.
    /// No policy is better than another. The active checkpoint is the logger; the candidate
    /// is sure (0.9 against 0.3) of a random model per row.
    fn null_trial(seed: u64, n: usize) -> OpeReport {
        null_trial_logged(seed, n, 0.7, 0.0)
    }

    /// [`null_trial`] with the logger's favourite served with `favourite_share` (the rest split
    /// evenly), and with `challenger_share` of the decisions made by the candidate itself
    /// exploring the same way (the second stage of `switchyard learn`): the logged
    /// probabilities are then the mixture.
    fn null_trial_logged(seed: u64, n: usize, favourite_share: f64, challenger_share: f64) -> OpeReport {
        trial_logged(seed, n, favourite_share, challenger_share, 0.0)
    }

    /// [`null_trial_logged`] where the candidate's pick is truly better by `advantage`.
    fn trial_logged(seed: u64, n: usize, favourite_share: f64, challenger_share: f64, advantage: f64) -> OpeReport {
        Trial::logged(seed, n, favourite_share, challenger_share, advantage).evaluate(n)
    }

    /// A logged trial's rows and each row's beliefs (candidate's, active's), to evaluate on any
    /// prefix of the rows: a challenger judged again sees the same rows and more.
    struct Trial {
        rows: Vec<LoggedRequest>,
        beliefs: HashMap<String, ([f32; 3], [f32; 3])>,
    }

    impl Trial {
        fn logged(seed: u64, n: usize, favourite_share: f64, challenger_share: f64, advantage: f64) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut rows = Vec::new();
            let mut beliefs: HashMap<String, ([f32; 3], [f32; 3])> = HashMap::new();
            let spread = |favourite: usize| -> Vec<f64> {
                (0..3).map(|j| if j == favourite { favourite_share } else { (1.0 - favourite_share) / 2.0 }).collect()
            };
            for i in 0..n {
                // Draw order kept from the first version of this test, so its counts reproduce.
                let favourite = rng.random_range(0..3);
                let draw: f64 = rng.random();
                let pet = rng.random_range(0..3);
                let (by_active, by_candidate) = (spread(favourite), spread(pet));
                let probabilities: Vec<f64> =
                    (0..3).map(|j| (1.0 - challenger_share) * by_active[j] + challenger_share * by_candidate[j]).collect();
                // Walk from the logger's favourite, as a logger that ranks it first would.
                let mut cumulative = 0.0;
                let served = (0..3).map(|k| (favourite + k) % 3).find(|&j| {
                    cumulative += probabilities[j];
                    draw < cumulative
                }).unwrap_or((favourite + 2) % 3);
                let active = std::array::from_fn(|j| if j == favourite { 0.6 } else { 0.4 });
                let new = std::array::from_fn(|j| if j == pet { 0.9 } else { 0.3 });
                let id = format!("{seed}-{i}");
                beliefs.insert(id.clone(), (new, active));
                let candidates = MODELS.iter().zip(&probabilities).enumerate().map(|(j, (m, p))| candidate(m, f64::from(active[j]), *p)).collect();
                let p_good = if served == pet { 0.5 + advantage } else { 0.5 };
                let good = if p_good == 0.5 { rng.random::<bool>() } else { rng.random::<f64>() < p_good };
                let feedback = if good { 1.0 } else { 0.0 };
                rows.push(rated(id, i, MODELS[served], candidates, probabilities[served], feedback));
            }
            Self { rows, beliefs }
        }

        /// The gate on the first `n` rows.
        fn evaluate(&self, n: usize) -> OpeReport {
            let predict = |pick_new: bool| {
                let beliefs = &self.beliefs;
                move |row: &LoggedRequest| -> Result<Vec<Prediction>> {
                    let (new, active) = beliefs[&row.id];
                    let q = if pick_new { new } else { active };
                    Ok(MODELS
                        .iter()
                        .zip(q)
                        .map(|(m, q)| Prediction { model_id: (*m).into(), quality: q, latency_ms: 0.0, output_tokens: 0.0 })
                        .collect())
                }
            };
            let held: Vec<&LoggedRequest> = self.rows.iter().take(n).collect();
            let candidates: Vec<String> = MODELS.iter().map(|m| (*m).to_owned()).collect();
            evaluate_policies(&held, &candidates, &predict(true), &candidates, &predict(false), RewardModel::ActiveHeads, 0.0).expect("evaluated")
        }
    }

    /// The gate's promise: when the candidate is no better, it is promoted at most as often as
    /// a one-sided 95% bound allows (5%, plus binomial slack over 300 trials).
    #[test]
    fn a_candidate_no_better_than_the_active_is_rarely_promoted() {
        let trials = 300usize;
        let reports: Vec<OpeReport> = (0..trials as u64).map(|seed| null_trial(seed, 180)).collect();
        let promoted = reports.iter().filter(|r| r.better).count();
        assert!(promoted <= trials * 7 / 100, "{promoted} of {trials} null candidates promoted");
        // And the estimate is centred: no policy is better, so the mean difference is ~0.
        let mean = reports.iter().map(|r| r.dr_difference).sum::<f64>() / trials as f64;
        assert!(mean.abs() < 0.01, "mean DR difference {mean:+.4}");
    }

    /// Where the active policy serves its favourite 90% of the time, a candidate's other picks
    /// are logged at 0.05, below the clip: the single stage charges their whole unverified mass
    /// and can promote nothing, not even a candidate better by 0.2 (0 of 300 in a measurement
    /// at 600 rows). With the candidate as the challenger for 20% of decisions its picks are
    /// logged at ≥ 0.14: it is promoted (279 of 300 measured; 244 at a 99% bound) while a
    /// no-better one still passes at about the nominal 5% (16 of 300; 1 at a 99% bound).
    #[test]
    fn a_challenger_makes_rarely_served_picks_checkable_at_the_nominal_error() {
        let rate = |favourite: f64, share: f64, advantage: f64, trials: u64| {
            (0..trials).filter(|&seed| trial_logged(seed, 600, favourite, share, advantage).better).count()
        };
        assert_eq!(rate(0.9, 0.0, 0.2, 50), 0, "the single stage cannot check rarely served picks");
        let promoted = rate(0.9, 0.2, 0.2, 50);
        assert!(promoted >= 40, "a better challenger promoted {promoted} of 50 times");
        let false_promotions = rate(0.9, 0.2, 0.0, 300);
        assert!(false_promotions <= 21, "{false_promotions} of 300 no-better challengers promoted");
    }

    /// How often a challenger is promoted when it may be judged up to `looks` times, on
    /// `per_look` more rows each time (the same rows and more), by `learn::challenger_verdict`.
    fn sequential_promotions(advantage: f64, per_look: usize, looks: u32, trials: u64) -> usize {
        (0..trials)
            .filter(|&seed| {
                let trial = Trial::logged(seed, per_look * looks as usize, 0.9, 0.2, advantage);
                (1..=looks)
                    .find_map(|look| match crate::learn::challenger_verdict(&trial.evaluate(per_look * look as usize), look, looks) {
                        crate::learn::Verdict::Promote => Some(true),
                        crate::learn::Verdict::Retire => Some(false),
                        crate::learn::Verdict::JudgeAgain => None,
                    })
                    .unwrap_or(false)
            })
            .count()
    }

    /// A challenger ahead on its estimate but not its bound is judged again on the same rows
    /// and as many more (`learn::challenger_verdict`). Measured at 300 rows a look, where the
    /// active serves its favourite 90% of the time and the challenger decides 20%: a no-better
    /// challenger was promoted 29 of 400 times with one judgement, 25 with two at Pocock's
    /// z = 1.875 (37 had the second look reused 1.645); one better by 0.1, 65 of 200 with one,
    /// 82 with two.
    #[test]
    fn judging_a_promising_challenger_again_finds_more_better_ones_without_more_false_promotions() {
        let false_once = sequential_promotions(0.0, 300, 1, 400);
        let false_twice = sequential_promotions(0.0, 300, 2, 400);
        assert!(false_twice <= false_once + 4 && false_twice <= 32, "no-better promoted {false_twice} of 400 with two looks, {false_once} with one");
        let better_once = sequential_promotions(0.1, 300, 1, 200);
        let better_twice = sequential_promotions(0.1, 300, 2, 200);
        assert!(better_twice >= better_once + 10, "better by 0.1 promoted {better_twice} of 200 with two looks, {better_once} with one");
    }

    /// A world where the logged embedding says something: prompts fall in 4 clusters, and in
    /// each one model (`best`) answers well with 0.5 + `advantage`, every other with 0.5.
    /// Ratings are thumbs (0 or 1 at that chance) or, `graded`, a judge's score (that chance
    /// ± 0.1).
    struct ClusteredWorld {
        rng: rand::rngs::StdRng,
        best: [usize; 4],
        graded: bool,
    }

    impl ClusteredWorld {
        fn new(seed: u64, graded: bool) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let best = std::array::from_fn(|_| rng.random_range(0..3));
            Self { rng, best, graded }
        }

        fn rating(&mut self, p_good: f64) -> f64 {
            if self.graded {
                p_good + self.rng.random_range(-0.1..0.1)
            } else if self.rng.random::<f64>() < p_good {
                1.0
            } else {
                0.0
            }
        }

        /// A prompt: its cluster and an 8-dimensional embedding near the cluster's axis.
        fn prompt(&mut self) -> (usize, Vec<f32>) {
            let cluster = self.rng.random_range(0..4);
            let embedding = (0..8).map(|d| f32::from(u8::from(d == cluster)) + self.rng.random_range(-0.35..0.35)).collect();
            (cluster, embedding)
        }

        /// `n` rows logged by an active policy with a random favourite per row (served with
        /// 0.9), with `challenger_share` of decisions made by a challenger that picks
        /// `challenger[cluster]` the same way. The active believes its favourite 0.6, the
        /// others 0.4 (so it underrates the challenger's pick); the challenger believes its
        /// pick 0.9, the others 0.3.
        fn log(&mut self, first_id: usize, n: usize, challenger: [usize; 4], challenger_share: f64, advantage: f64, beliefs: &mut HashMap<String, ([f32; 3], [f32; 3])>) -> Vec<LoggedRequest> {
            let spread = |favourite: usize| -> [f64; 3] { std::array::from_fn(|j| if j == favourite { 0.9 } else { 0.05 }) };
            (first_id..first_id + n)
                .map(|i| {
                    let (cluster, embedding) = self.prompt();
                    let favourite = self.rng.random_range(0..3);
                    let pick = challenger[cluster];
                    let (by_active, by_challenger) = (spread(favourite), spread(pick));
                    let probabilities: [f64; 3] = std::array::from_fn(|j| (1.0 - challenger_share) * by_active[j] + challenger_share * by_challenger[j]);
                    let draw: f64 = self.rng.random();
                    let mut cumulative = 0.0;
                    let served = (0..3).find(|&j| {
                        cumulative += probabilities[j];
                        draw < cumulative
                    }).unwrap_or(2);
                    let p_good = if served == self.best[cluster] { 0.5 + advantage } else { 0.5 };
                    let feedback = self.rating(p_good);
                    let active: [f32; 3] = std::array::from_fn(|j| if j == favourite { 0.6 } else { 0.4 });
                    let new: [f32; 3] = std::array::from_fn(|j| if j == pick { 0.9 } else { 0.3 });
                    let id = format!("{i}");
                    beliefs.insert(id.clone(), (new, active));
                    let candidates = MODELS.iter().zip(probabilities).enumerate().map(|(j, (m, p))| candidate(m, f64::from(active[j]), p)).collect();
                    let mut row = rated(id, i, MODELS[served], candidates, probabilities[served], feedback);
                    row.embedding = Some(embedding);
                    row
                })
                .collect()
        }
    }

    /// One stage-2 judgement in the clustered world: 600 reference rows logged by the active
    /// alone, then `n` judged rows with the challenger deciding 20%. The challenger either
    /// knows each cluster's best model (`overfit = false`) or, where no model is better, picks
    /// per cluster the model the reference rows happened to rate best — the noise the
    /// nearest-rows reward model is built from, which a challenger trained on those rows
    /// learns too. Returns (promoted with the nearest rows, promoted with the active's heads).
    fn clustered_judgement(seed: u64, n: usize, advantage: f64, overfit: bool, graded: bool) -> (bool, bool) {
        let mut world = ClusteredWorld::new(seed, graded);
        let mut beliefs = HashMap::new();
        let reference = world.log(0, 600, [0; 4], 0.0, advantage, &mut beliefs);
        let challenger: [usize; 4] = if overfit {
            std::array::from_fn(|cluster| {
                let rate = |j: usize| {
                    let served: Vec<f64> = reference
                        .iter()
                        .filter(|r| r.model == MODELS[j] && r.embedding.as_ref().is_some_and(|e| e[cluster] > 0.5))
                        .filter_map(|r| r.feedback)
                        .collect();
                    served.iter().sum::<f64>() / served.len().max(1) as f64
                };
                (0..3).max_by(|&a, &b| rate(a).total_cmp(&rate(b))).unwrap_or(0)
            })
        } else {
            world.best
        };
        let judged = world.log(600, n, challenger, 0.2, advantage, &mut beliefs);
        let predict = |pick_new: bool| {
            let beliefs = &beliefs;
            move |row: &LoggedRequest| -> Result<Vec<Prediction>> {
                let (new, active) = beliefs[&row.id];
                let q = if pick_new { new } else { active };
                Ok(MODELS.iter().zip(q).map(|(m, q)| Prediction { model_id: (*m).into(), quality: q, latency_ms: 0.0, output_tokens: 0.0 }).collect())
            }
        };
        let nearest = NearestRows::from_rows(&reference, 8);
        let held: Vec<&LoggedRequest> = judged.iter().collect();
        let candidates: Vec<String> = MODELS.iter().map(|m| (*m).to_owned()).collect();
        let judge = |reward| evaluate_policies(&held, &candidates, &predict(true), &candidates, &predict(false), reward, 0.0).expect("evaluated").better;
        (judge(RewardModel::NearestRows(&nearest)), judge(RewardModel::ActiveHeads))
    }

    /// The nearest-rows reward model keeps the gate's promise where the challenger learned the
    /// very noise it is built from (a no-better challenger promoted about as often as the 95%
    /// bound allows), and finds more of the truly better challengers than the active
    /// checkpoint's heads where those are wrong about the challenger's picks and the ratings
    /// say much per row. Measured at 600 judged rows: no-better (overfit) challengers promoted
    /// 16 of 300 with the nearest rows (13 with the active's heads) under thumbs, 19 (13) under
    /// graded ratings, within the binomial slack of 5% (15 of 300); better by 0.02 under graded
    /// ratings, 177 of 200 against 116. Under thumbs each rating's own noise dominates: better
    /// by 0.1, 47 of 100 against 43 (not asserted).
    #[test]
    fn a_reward_model_of_the_nearest_earlier_rows_finds_better_challengers_without_more_false_promotions() {
        let count = |trials: std::ops::Range<u64>, advantage: f64, overfit: bool, graded: bool| {
            trials.fold((0, 0), |(nearest, active), seed| {
                let (n, a) = clustered_judgement(seed, 600, advantage, overfit, graded);
                (nearest + usize::from(n), active + usize::from(a))
            })
        };
        for graded in [false, true] {
            let (false_nearest, false_active) = count(0..300, 0.0, true, graded);
            assert!(false_nearest <= 21, "graded {graded}: {false_nearest} of 300 no-better challengers promoted (active's heads: {false_active})");
        }
        let (found_nearest, found_active) = count(1_000..1_200, 0.02, false, true);
        assert!(found_nearest >= found_active + 30, "graded, better by 0.02: promoted {found_nearest} of 200 with the nearest rows, {found_active} with the active's heads");
    }
}
