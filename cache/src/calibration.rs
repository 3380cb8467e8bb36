//! A bound the operator sets on wrong semantic hits, kept by calibrating the verifier's
//! threshold online (after vCache, arXiv 2502.03771).
//!
//! The shipped verifier threshold was chosen on Quora pairs; a deployment's questions are not
//! Quora's. With `max_wrong_hit_rate` set, every candidate the verifier passes is judged by
//! what happens to it: some are *audited* — the request goes to the upstream as a miss and the
//! fresh answer is compared with the cached one — and clients' feedback on served hits says
//! whether they were right. The calibrator serves a candidate only when its score clears a
//! threshold at which the one-sided 95% upper bound of the wrong rate, among observed
//! candidates scoring at or above it, is within the bound — thresholds tested from the
//! strictest down, stopping at the first that fails ([`calibrated_threshold`]). On the Quora
//! validation candidates (`cache/tests/error_bound.rs`) it served at a threshold unsafe for
//! the whole population in at most 4 of 300 random orders. Until the observations show that
//! (about 2.7 / bound agreeing audits with no wrong one), candidates are audited, not served:
//! a fresh deployment pays upstream calls it would have paid without a cache, never wrong
//! answers. Once serving, a share of would-be hits (`audit_share`) is still audited, so a
//! drift in what the cache sees moves the threshold.
//!
//! Answers are compared lexically ([`answers_agree`]): conservative for verbose answers (a
//! model that rephrases itself counts as disagreeing with itself), so the threshold errs high.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Observations kept per scope: the newest ones, so the threshold follows the traffic.
pub const MAX_OBSERVATIONS: usize = 2_000;
/// One-sided 95% normal quantile for the Wilson upper bound.
const Z95: f64 = 1.645;

/// What to do with a candidate the verifier passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Answer from the upstream and compare: the observation that calibrates the threshold.
    Audit,
}

/// Where an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The upstream's fresh answer compared with the cached one.
    Audit,
    /// A client's score on a served hit (below 0.5: wrong).
    Feedback,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Feedback => "feedback",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "audit" => Some(Self::Audit),
            "feedback" => Some(Self::Feedback),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Observation {
    score: f32,
    wrong: bool,
}

#[derive(Debug, Default)]
struct ScopeState {
    bound: f64,
    observations: VecDeque<Observation>,
    /// `None`: no threshold keeps the bound yet (every candidate is audited).
    threshold: Option<f32>,
    audits: u64,
    feedback: u64,
    served: u64,
}

impl ScopeState {
    /// Keeps one observation (the newest [`MAX_OBSERVATIONS`]) and counts where it came from.
    fn record(&mut self, score: f32, wrong: bool, evidence: Evidence) {
        self.observations.push_back(Observation { score, wrong });
        while self.observations.len() > MAX_OBSERVATIONS {
            self.observations.pop_front();
        }
        match evidence {
            Evidence::Audit => self.audits += 1,
            Evidence::Feedback => self.feedback += 1,
        }
    }

    fn recalibrate(&mut self) {
        let observations: Vec<Observation> = self.observations.iter().copied().collect();
        self.threshold = calibrated_threshold(&observations, self.bound);
    }
}

/// The state of one bounded scope, for the dashboard.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CalibrationStatus {
    /// `tenant:NAME`, `route:NAME` or `all`: where the bound was set.
    pub scope: String,
    /// The tolerated share of wrong semantic hits.
    pub max_wrong_hit_rate: f64,
    /// The verifier score a candidate must reach to be served; `None` while still learning.
    pub threshold: Option<f32>,
    pub observations: usize,
    pub wrong: usize,
    /// Observed candidates at or above the threshold, and how many of them were wrong.
    pub at_threshold: usize,
    pub wrong_at_threshold: usize,
    /// One-sided 95% upper bound of the wrong rate among candidates the threshold serves.
    pub wrong_rate_upper95: Option<f64>,
    pub audits: u64,
    pub feedback: u64,
    pub served: u64,
}

/// A served hit that feedback may still rate.
#[derive(Debug, Clone)]
struct ServedHit {
    scope: String,
    bound: f64,
    score: f32,
}

/// How long a served hit can be rated, and how many are remembered.
const SERVED_HIT_MEMORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const SERVED_HITS_REMEMBERED: u64 = 100_000;

/// Per-scope calibration state, shared by every request of a gateway process (not persisted:
/// a restarted gateway audits again until its observations show the bound).
pub struct Calibrator {
    scopes: Mutex<BTreeMap<String, ScopeState>>,
    /// Request id → the hit served, for feedback.
    served: moka::sync::Cache<u128, ServedHit>,
}

impl Default for Calibrator {
    fn default() -> Self {
        Self {
            scopes: Mutex::default(),
            served: moka::sync::Cache::builder().max_capacity(SERVED_HITS_REMEMBERED).time_to_live(SERVED_HIT_MEMORY).build(),
        }
    }
}

impl std::fmt::Debug for Calibrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calibrator").field("scopes", &self.lock().len()).finish_non_exhaustive()
    }
}

impl Calibrator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a served hit so that feedback on `request_id` counts as evidence.
    pub fn remember_served(&self, request_id: u128, scope: &str, bound: f64, score: f32) {
        self.served.insert(request_id, ServedHit { scope: scope.to_owned(), bound, score });
    }

    /// The served hit behind `request_id`, once: (scope, bound, score). Feedback on it is
    /// evidence ([`Evidence::Feedback`]; the first score counts).
    pub fn take_served(&self, request_id: u128) -> Option<(String, f64, f32)> {
        self.served.remove(&request_id).map(|hit| (hit.scope, hit.bound, hit.score))
    }

    /// Loads evidence kept from an earlier process (oldest first). The scope's bound is
    /// learnt, and its threshold computed, at its next [`decide`](Self::decide).
    pub fn restore(&self, scope: &str, score: f32, wrong: bool, evidence: Evidence) {
        if !score.is_finite() {
            return;
        }
        let mut scopes = self.lock();
        let state = scopes.entry(scope.to_owned()).or_insert_with(|| ScopeState { bound: f64::NAN, ..ScopeState::default() });
        state.record(score, wrong, evidence);
        // Recomputed by `decide` once the bound is known (NaN never equals it).
        state.bound = f64::NAN;
        state.threshold = None;
    }

    /// Serve or audit a candidate with verifier `score` in `scope` (bound `bound`); `draw` is
    /// uniform in 0..1 and audits a served-level candidate when below `audit_share`.
    pub fn decide(&self, scope: &str, bound: f64, score: f32, audit_share: f64, draw: f64) -> Verdict {
        let mut scopes = self.lock();
        let state = scopes.entry(scope.to_owned()).or_insert_with(|| ScopeState { bound, ..ScopeState::default() });
        if state.bound != bound {
            state.bound = bound;
            state.recalibrate();
        }
        let serve = state.threshold.is_some_and(|t| score >= t) && draw >= audit_share;
        if serve {
            state.served += 1;
            Verdict::Serve
        } else {
            Verdict::Audit
        }
    }

    /// Records whether a candidate with `score` was wrong, and recalibrates the scope.
    pub fn observe(&self, scope: &str, bound: f64, score: f32, wrong: bool, evidence: Evidence) {
        if !score.is_finite() {
            return;
        }
        let mut scopes = self.lock();
        let state = scopes.entry(scope.to_owned()).or_insert_with(|| ScopeState { bound, ..ScopeState::default() });
        state.bound = bound;
        state.record(score, wrong, evidence);
        state.recalibrate();
    }

    pub fn status(&self) -> Vec<CalibrationStatus> {
        self.lock()
            .iter()
            .map(|(scope, state)| {
                let at = |t: Option<f32>| state.observations.iter().filter(move |o| t.is_some_and(|t| o.score >= t));
                let (at_threshold, wrong_at_threshold) = (at(state.threshold).count(), at(state.threshold).filter(|o| o.wrong).count());
                CalibrationStatus {
                    scope: scope.clone(),
                    max_wrong_hit_rate: state.bound,
                    threshold: state.threshold,
                    observations: state.observations.len(),
                    wrong: state.observations.iter().filter(|o| o.wrong).count(),
                    at_threshold,
                    wrong_at_threshold,
                    wrong_rate_upper95: state.threshold.map(|_| wilson_upper(wrong_at_threshold, at_threshold)),
                    audits: state.audits,
                    feedback: state.feedback,
                    served: state.served,
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ScopeState>> {
        // A panic while holding the lock leaves counts, never a broken invariant: keep going.
        self.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Thresholds are tested on this grid (0.01 apart), from the strictest down.
const GRID_STEPS: u32 = 100;
/// The threshold to serve at: levels of a fixed grid are tested from the strictest down (a
/// level with too few observations at or above it to pass even with none wrong is skipped),
/// each passing when the Wilson one-sided 95% upper bound of the wrong rate among
/// observations at or above it is within `bound`; the walk stops at the first level that
/// fails. Stopping there, rather than taking the lowest level that passes anywhere, is a
/// fixed-sequence test ("learn then test"): a lucky stretch of right answers below a level
/// shown unsafe cannot open it. The threshold is the lowest observed score the passing levels
/// cover (never below the evidence); `None` when no level passes.
fn calibrated_threshold(observations: &[Observation], bound: f64) -> Option<f32> {
    let mut sorted = observations.to_vec();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut taken, mut wrong, mut best) = (0usize, 0usize, None);
    for step in (0..GRID_STEPS).rev() {
        let level = step as f32 / GRID_STEPS as f32;
        while let Some(o) = sorted.get(taken).filter(|o| o.score >= level) {
            wrong += usize::from(o.wrong);
            taken += 1;
        }
        if wilson_upper(0, taken) > bound {
            continue;
        }
        if wilson_upper(wrong, taken) > bound {
            break;
        }
        // The lowest score observed, not the level: never serve below the evidence.
        best = Some(sorted[taken - 1].score);
    }
    best
}

/// Wilson score upper bound (one-sided 95%) of a rate with `k` events in `n` trials; 1 for none.
pub fn wilson_upper(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = Z95 * Z95;
    let centre = p + z2 / (2.0 * n);
    let spread = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// Whether two answers say the same: equal once case, punctuation and spacing are ignored, or
/// nearly the same words (Jaccard ≥ 0.8) with no number, negation or other answer-changing
/// word differing between them.
pub fn answers_agree(a: &str, b: &str) -> bool {
    let normalise = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
    };
    let (wa, wb) = (normalise(a), normalise(b));
    if wa == wb {
        return !wa.is_empty();
    }
    let (sa, sb): (std::collections::HashSet<&String>, std::collections::HashSet<&String>) = (wa.iter().collect(), wb.iter().collect());
    let union = sa.union(&sb).count();
    let jaccard = if union == 0 { 0.0 } else { sa.intersection(&sb).count() as f64 / union as f64 };
    jaccard >= 0.8 && crate::verifier::lexical_veto(a, b).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(score: f32, wrong: bool) -> Observation {
        Observation { score, wrong }
    }

    #[test]
    fn wilson_bound_is_one_without_data_and_shrinks_with_agreeing_ones() {
        assert_eq!(wilson_upper(0, 0), 1.0);
        // About 2.7 / bound agreeing observations bring the bound down to `bound`.
        assert!(wilson_upper(0, 10) > 0.2 && wilson_upper(0, 11) <= 0.2, "{} {}", wilson_upper(0, 10), wilson_upper(0, 11));
        assert!(wilson_upper(0, 52) <= 0.05 && wilson_upper(0, 50) > 0.05);
        assert!(wilson_upper(5, 10) > 0.5 && wilson_upper(5, 10) < 0.8);
    }

    #[test]
    fn no_threshold_until_the_observations_show_the_bound() {
        let few: Vec<_> = (0..5).map(|_| obs(0.9, false)).collect();
        assert_eq!(calibrated_threshold(&few, 0.2), None);
        let enough: Vec<_> = (0..12).map(|i| obs(0.9 + i as f32 * 0.001, false)).collect();
        assert_eq!(calibrated_threshold(&enough, 0.2), Some(0.9));
    }

    #[test]
    fn wrong_answers_at_low_scores_raise_the_threshold_above_them() {
        let mut o: Vec<_> = (0..40).map(|i| obs(0.95 + i as f32 * 0.001, false)).collect();
        o.extend((0..10).map(|i| obs(0.80 + i as f32 * 0.001, true)));
        let t = calibrated_threshold(&o, 0.1).expect("the high scores keep the bound");
        assert!(t >= 0.8, "{t}");
        // Serving down to t: the wrong rate among observations at ≥ t stays within the bound.
        let served: Vec<_> = o.iter().filter(|x| x.score >= t).collect();
        let wrong = served.iter().filter(|x| x.wrong).count();
        assert!(wilson_upper(wrong, served.len()) <= 0.1);
        // A stricter bound than the evidence allows: nothing is served.
        assert_eq!(calibrated_threshold(&o, 0.01), None);
    }

    #[test]
    fn the_calibrator_audits_until_it_may_serve_and_feedback_stops_it() {
        let c = Calibrator::new();
        assert_eq!(c.decide("all", 0.2, 0.9, 0.0, 0.5), Verdict::Audit);
        for _ in 0..11 {
            c.observe("all", 0.2, 0.9, false, Evidence::Audit);
        }
        assert_eq!(c.decide("all", 0.2, 0.9, 0.0, 0.5), Verdict::Serve);
        c.remember_served(7, "all", 0.2, 0.9);
        assert_eq!(c.take_served(8), None, "not a served hit");
        assert_eq!(c.take_served(7), Some(("all".to_owned(), 0.2, 0.9)));
        assert_eq!(c.take_served(7), None, "the first score counts, once");
        c.observe("all", 0.2, 0.9, false, Evidence::Feedback);
        // Below the learned threshold, or drawn for an audit: audited.
        assert_eq!(c.decide("all", 0.2, 0.85, 0.0, 0.5), Verdict::Audit);
        assert_eq!(c.decide("all", 0.2, 0.9, 0.1, 0.05), Verdict::Audit);
        for _ in 0..4 {
            c.observe("all", 0.2, 0.9, true, Evidence::Feedback);
        }
        assert_eq!(c.decide("all", 0.2, 0.9, 0.0, 0.5), Verdict::Audit);
        let status = c.status();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].observations, status[0].wrong, status[0].audits, status[0].feedback, status[0].served), (16, 4, 11, 5, 1));
        assert_eq!(status[0].threshold, None);
    }

    #[test]
    fn restored_evidence_decides_once_the_bound_is_known() {
        let c = Calibrator::new();
        for _ in 0..11 {
            c.restore("route:a", 0.9, false, Evidence::Audit);
        }
        assert_eq!(c.status()[0].threshold, None);
        assert_eq!(c.decide("route:a", 0.2, 0.9, 0.0, 0.5), Verdict::Serve);
        assert_eq!(c.decide("route:a", 0.05, 0.9, 0.0, 0.5), Verdict::Audit, "a stricter bound needs more evidence");
    }

    #[test]
    fn observations_are_bounded_and_scopes_separate() {
        let c = Calibrator::new();
        for _ in 0..MAX_OBSERVATIONS + 10 {
            c.observe("route:a", 0.1, 0.9, false, Evidence::Audit);
        }
        c.observe("tenant:b", 0.1, 0.9, true, Evidence::Audit);
        let status = c.status();
        assert_eq!(status.iter().map(|s| (s.scope.as_str(), s.observations)).collect::<Vec<_>>(), [("route:a", MAX_OBSERVATIONS), ("tenant:b", 1)]);
        assert_eq!(c.decide("tenant:b", 0.1, 0.9, 0.0, 0.5), Verdict::Audit);
        assert_eq!(c.decide("route:a", 0.1, 0.9, 0.0, 0.5), Verdict::Serve);
    }

    #[test]
    fn answers_agree_on_the_same_text_and_not_on_changed_facts() {
        assert!(answers_agree("The capital of France is Paris.", "the capital of france is paris"));
        assert!(!answers_agree("The capital of France is Paris.", "The capital of France is Lyon."));
        assert!(!answers_agree("It takes 3 days.", "It takes 4 days."));
        assert!(!answers_agree("", ""));
        assert!(!answers_agree("Yes, it is safe to eat.", "No, it is not safe to eat."));
    }
}
