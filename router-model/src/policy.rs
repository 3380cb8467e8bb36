//! From predictions to a choice: the caller's trade-off, availability, a cost ceiling and a
//! little logged exploration.
//!
//! Utility of a candidate = w_q · quality − w_c · cost − w_l · latency, with quality in 0..1,
//! cost in USD per 1,000 requests and latency in seconds, so the weights read as "how much
//! quality (probability of a good answer) is one dollar per thousand requests, or one second,
//! worth". Exploration ([`Exploration`]) is a softmax over utility, capped in share and extra
//! cost (or ε-greedy); the chosen candidate's probability is logged as its propensity so
//! training can correct for the policy that produced the data.
//!
//! It lives here, beside the selector, because serving (the gateway) and offline evaluation
//! (`evals`) must choose with exactly the same code: a report about a policy that the gateway
//! does not run would be a report about nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Prediction;
use crate::error::Error;

/// How much the caller values quality against cost and latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tradeoff {
    #[serde(default = "one")]
    pub quality: f64,
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub latency: f64,
}

fn one() -> f64 {
    1.0
}

impl Tradeoff {
    pub const BEST: Self = Self { quality: 1.0, cost: 0.0, latency: 0.0 };
    pub const BALANCED: Self = Self { quality: 1.0, cost: 0.05, latency: 0.02 };
    pub const CHEAP: Self = Self { quality: 1.0, cost: 1.0, latency: 0.0 };
    pub const FAST: Self = Self { quality: 1.0, cost: 0.0, latency: 0.5 };

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "best" => Some(Self::BEST),
            "balanced" => Some(Self::BALANCED),
            "cheap" => Some(Self::CHEAP),
            "fast" => Some(Self::FAST),
            _ => None,
        }
    }

    /// Parses `x-switchyard-tradeoff`: a preset name, or `quality=1,cost=0.5,latency=0.1`
    /// where missing keys keep the route's values.
    pub fn parse_override(text: &str, base: Self) -> Result<Self, Error> {
        let text = text.trim();
        if let Some(preset) = Self::preset(text) {
            return Ok(preset);
        }
        let bad = |detail: String| {
            Error::Policy(format!(
                "x-switchyard-tradeoff: {detail}; use a preset (best, balanced, cheap, fast) or quality=1,cost=0.5,latency=0.1"
            ))
        };
        let mut out = base;
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| bad(format!("`{pair}` is not key=value")))?;
            let value: f64 = value.trim().parse().map_err(|_| bad(format!("`{value}` is not a number")))?;
            if !value.is_finite() || value < 0.0 {
                return Err(bad(format!("`{key}` must be a non-negative number")));
            }
            match key.trim() {
                "quality" => out.quality = value,
                "cost" => out.cost = value,
                "latency" => out.latency = value,
                other => return Err(bad(format!("unknown key `{other}`"))),
            }
        }
        Ok(out)
    }

    pub fn utility(&self, quality: f64, cost_usd: f64, latency_ms: f64) -> f64 {
        self.quality * quality - self.cost * cost_usd * 1_000.0 - self.latency * latency_ms / 1_000.0
    }
}

impl fmt::Display for Tradeoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quality={},cost={},latency={}", self.quality, self.cost, self.latency)
    }
}

/// A model's list price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl Price {
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_usd_per_mtok + completion_tokens as f64 * self.output_usd_per_mtok) / 1e6
    }
}

/// One candidate of a route as the policy sees it: its place in the route, its selector
/// head and its price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Index into the route's candidate list (what [`Scored::candidate`] refers to).
    pub index: usize,
    /// Index into the checkpoint's predictions.
    pub head: usize,
    pub price: Price,
}

/// Turns the selector's predictions into scored candidates for `tradeoff`: predicted cost is
/// the prompt's tokens at the input price plus the predicted output tokens (rounded) at the
/// output price. Candidates whose head is out of range are skipped.
pub fn score(predictions: &[Prediction], candidates: &[Candidate], prompt_tokens: u32, tradeoff: Tradeoff) -> Vec<Scored> {
    candidates
        .iter()
        .filter_map(|c| {
            let p = predictions.get(c.head)?;
            let cost_usd = c.price.cost_usd(u64::from(prompt_tokens), p.output_tokens.max(0.0).round() as u64);
            let (quality, latency_ms) = (f64::from(p.quality), f64::from(p.latency_ms));
            Some(Scored {
                candidate: c.index,
                quality,
                cost_usd,
                latency_ms,
                utility: tradeoff.utility(quality, cost_usd, latency_ms),
            })
        })
        .collect()
}

/// What the selector expects of one candidate for this request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// Index into the route's candidate list.
    pub candidate: usize,
    pub quality: f64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub utility: f64,
}

/// How a route explores: which non-best candidates it may try, how often, and at what
/// extra cost. Every choice's probability is computed exactly and logged as its propensity.
///
/// - [`ExplorationPolicy::Softmax`] (the default) gives each candidate a weight
///   exp((utility − best utility) / temperature): a candidate whose predicted utility is close
///   to the best is tried often, one far below it almost never. Exploration therefore goes
///   where the selector cannot tell candidates apart — where a label is worth most — and
///   costs little where the choice is clear. The share of non-best choices is then capped at
///   `max_share`.
/// - [`ExplorationPolicy::EpsilonGreedy`] spreads `max_share` evenly over the candidates
///   (the best keeps 1 − ε + ε/n): simple, but it pays the same for a hopeless candidate as
///   for a near tie.
///
/// `max_extra_cost_usd` bounds what one explored request may cost above the best candidate
/// (predicted); dearer candidates are never explored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exploration {
    pub policy: ExplorationPolicy,
    /// Most probability mass that non-best candidates get, 0..1 (0: never explore).
    pub max_share: f64,
    /// Softmax temperature in utility units (quality points): at 0.05, a candidate 0.05 below
    /// the best gets e⁻¹ of its weight.
    pub temperature: f64,
    pub max_extra_cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplorationPolicy {
    Softmax,
    EpsilonGreedy,
}

impl Exploration {
    /// No exploration: always the best candidate.
    pub const OFF: Self = Self {
        policy: ExplorationPolicy::Softmax,
        max_share: 0.0,
        temperature: DEFAULT_TEMPERATURE,
        max_extra_cost_usd: None,
    };

    pub fn epsilon_greedy(epsilon: f64) -> Self {
        Self {
            policy: ExplorationPolicy::EpsilonGreedy,
            max_share: epsilon,
            ..Self::OFF
        }
    }

    pub fn softmax(temperature: f64, max_share: f64) -> Self {
        Self {
            policy: ExplorationPolicy::Softmax,
            max_share,
            temperature,
            max_extra_cost_usd: None,
        }
    }

    /// The probability of each of `eligible` (sorted best utility first).
    fn probabilities(&self, eligible: &[&Scored]) -> Vec<f64> {
        let n = eligible.len();
        let mut p = vec![0.0; n];
        if n == 0 {
            return p;
        }
        p[0] = 1.0;
        let share = self.max_share.clamp(0.0, 1.0);
        if n == 1 || share == 0.0 {
            return p;
        }
        let best = eligible[0];
        let explorable: Vec<usize> = (1..n)
            .filter(|&i| self.max_extra_cost_usd.is_none_or(|max| eligible[i].cost_usd - best.cost_usd <= max))
            .collect();
        if explorable.is_empty() {
            return p;
        }
        match self.policy {
            ExplorationPolicy::EpsilonGreedy => {
                let each = share / (explorable.len() + 1) as f64;
                p[0] = 1.0 - share + each;
                for &i in &explorable {
                    p[i] = each;
                }
            }
            ExplorationPolicy::Softmax => {
                let t = self.temperature.max(1e-9);
                let weight = |s: &Scored| ((s.utility - best.utility) / t).exp();
                let total: f64 = 1.0 + explorable.iter().map(|&i| weight(eligible[i])).sum::<f64>();
                let mut others = 0.0;
                for &i in &explorable {
                    p[i] = weight(eligible[i]) / total;
                    others += p[i];
                }
                if others > share {
                    for &i in &explorable {
                        p[i] *= share / others;
                    }
                    others = share;
                }
                p[0] = 1.0 - others;
            }
        }
        p
    }
}

/// Softmax temperature when a route sets none.
pub const DEFAULT_TEMPERATURE: f64 = 0.05;

/// The policy's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Candidate indices, best utility first; the chosen one is moved to the front, the rest
    /// are the fallback order.
    pub ranking: Vec<usize>,
    /// Probability the policy had of choosing `ranking[0]`.
    pub propensity: f64,
    /// A candidate other than the best was chosen.
    pub explored: bool,
    /// `(candidate, probability)` for every eligible candidate, best utility first: the
    /// whole distribution the choice was drawn from (logged, so a later policy can be
    /// evaluated against it exactly).
    pub probabilities: Vec<(usize, f64)>,
}

/// Picks among scored, available candidates. `draw` is a uniform sample in [0, 1)
/// (injected so tests are deterministic). Candidates above `max_cost_usd` are dropped unless
/// none is left, in which case the cheapest is used.
pub fn choose(scored: &[Scored], max_cost_usd: Option<f64>, exploration: &Exploration, draw: f64) -> Option<Choice> {
    let mut eligible: Vec<&Scored> = scored
        .iter()
        .filter(|s| max_cost_usd.is_none_or(|max| s.cost_usd <= max))
        .collect();
    if eligible.is_empty() {
        let cheapest = scored.iter().min_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd))?;
        eligible.push(cheapest);
    }
    eligible.sort_by(|a, b| b.utility.total_cmp(&a.utility));
    let probabilities = exploration.probabilities(&eligible);
    // Walk the cumulative distribution; rounding leaves the last positive one as the catch-all.
    let mut chosen = 0;
    let mut cumulative = 0.0;
    for (i, p) in probabilities.iter().enumerate() {
        if *p <= 0.0 {
            continue;
        }
        chosen = i;
        cumulative += p;
        if draw < cumulative {
            break;
        }
    }
    let mut ranking: Vec<usize> = eligible.iter().map(|s| s.candidate).collect();
    let picked = ranking.remove(chosen);
    ranking.insert(0, picked);
    Some(Choice {
        ranking,
        propensity: probabilities[chosen],
        explored: chosen != 0,
        probabilities: eligible.iter().map(|s| s.candidate).zip(probabilities.iter().copied()).collect(),
    })
}

/// Serves `share` of decisions by a challenger selector's policy and the rest by the
/// incumbent's, with one uniform `draw`. The logged distribution is the mixture
/// (1 − share)·p_incumbent + share·p_challenger for every candidate, so the log evaluates any
/// later policy exactly; a challenger that picks what the incumbent would not gives those
/// picks a logged probability of at least share·p_challenger(pick), which is what lets the
/// next promotion gate check a candidate like it without clipping. The fallback order after
/// the pick is the incumbent's. `explored` means the pick is not the incumbent's best.
pub fn choose_with_challenger(
    scored: &[Scored],
    challenger_scored: &[Scored],
    max_cost_usd: Option<f64>,
    exploration: &Exploration,
    share: f64,
    draw: f64,
) -> Option<Choice> {
    let share = share.clamp(0.0, 1.0);
    if share <= 0.0 {
        return choose(scored, max_cost_usd, exploration, draw);
    }
    let by_challenger = draw < share;
    // Each branch gets its own uniform draw: draw / share below the split, the rest above it.
    let branch_draw = |d: f64| d.clamp(0.0, 1.0 - f64::EPSILON);
    let incumbent_draw = if by_challenger { 0.0 } else { branch_draw((draw - share) / (1.0 - share)) };
    let incumbent = choose(scored, max_cost_usd, exploration, incumbent_draw)?;
    let Some(challenger) = choose(challenger_scored, max_cost_usd, exploration, if by_challenger { branch_draw(draw / share) } else { 0.0 })
    else {
        return Some(incumbent);
    };
    let p_of = |c: &Choice, k: usize| c.probabilities.iter().find(|(i, _)| *i == k).map_or(0.0, |(_, p)| *p);
    let mut probabilities: Vec<(usize, f64)> = incumbent
        .probabilities
        .iter()
        .map(|&(k, p)| (k, (1.0 - share) * p + share * p_of(&challenger, k)))
        .collect();
    for &(k, p) in &challenger.probabilities {
        if !probabilities.iter().any(|(i, _)| *i == k) {
            probabilities.push((k, share * p));
        }
    }
    let picked = if by_challenger { challenger.ranking[0] } else { incumbent.ranking[0] };
    let incumbent_best = incumbent.probabilities.first().map(|(k, _)| *k);
    let mut ranking = vec![picked];
    ranking.extend(incumbent.probabilities.iter().map(|(k, _)| *k).filter(|&k| k != picked));
    ranking.extend(challenger.probabilities.iter().map(|(k, _)| *k).filter(|k| !ranking.contains(k)).collect::<Vec<_>>());
    Some(Choice {
        ranking,
        propensity: probabilities.iter().find(|(k, _)| *k == picked).map_or(0.0, |(_, p)| *p),
        explored: Some(picked) != incumbent_best,
        probabilities,
    })
}

/// When the selector is unsure, the route's default: if no candidate's predicted utility beats
/// the default's by at least `min_advantage`, the default's utility is raised to the best's
/// (ties go to it), so it is served — and explored around — as the best. Returns whether it
/// was raised. On prompts unlike its training data the selector's small predicted gaps are
/// mostly noise, and a route default chosen by the operator is the safer bet; `0` turns it off.
pub fn prefer_default_when_unsure(scored: &mut [Scored], default: usize, min_advantage: f64) -> bool {
    if min_advantage <= 0.0 {
        return false;
    }
    let Some(d) = scored.iter().position(|s| s.candidate == default) else {
        return false;
    };
    let best = scored.iter().map(|s| s.utility).fold(f64::NEG_INFINITY, f64::max);
    let own = scored[d].utility;
    if own >= best || best - own >= min_advantage {
        return false;
    }
    // Just above the best, so the default sorts first whatever the candidates' order.
    scored[d].utility = best + best.abs().max(1.0) * 1e-12;
    true
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_wins_small_predicted_gaps_only() {
        let t = Tradeoff { quality: 1.0, cost: 0.0, latency: 0.0 };
        let mut near = vec![scored(0, 0.70, 0.0, t), scored(1, 0.73, 0.0, t)];
        assert!(prefer_default_when_unsure(&mut near, 0, 0.05));
        let choice = choose(&near, None, &Exploration::OFF, 0.0).expect("a choice");
        assert_eq!(choice.ranking, vec![0, 1]);

        let mut clear = vec![scored(0, 0.60, 0.0, t), scored(1, 0.73, 0.0, t)];
        assert!(!prefer_default_when_unsure(&mut clear, 0, 0.05));
        assert_eq!(choose(&clear, None, &Exploration::OFF, 0.0).expect("a choice").ranking[0], 1);
        // Off at 0, and nothing to do when the default is already the best.
        assert!(!prefer_default_when_unsure(&mut near.clone(), 1, 0.0));
        let mut best_already = vec![scored(0, 0.80, 0.0, t), scored(1, 0.73, 0.0, t)];
        assert!(!prefer_default_when_unsure(&mut best_already, 0, 0.05));
    }

    fn scored(candidate: usize, quality: f64, cost_usd: f64, tradeoff: Tradeoff) -> Scored {
        Scored {
            candidate,
            quality,
            cost_usd,
            latency_ms: 1000.0,
            utility: tradeoff.utility(quality, cost_usd, 1000.0),
        }
    }

    #[test]
    fn score_prices_the_predicted_tokens() {
        let prediction = |quality: f32, output_tokens: f32| Prediction {
            model_id: String::new(),
            quality,
            latency_ms: 2_000.0,
            output_tokens,
        };
        let predictions = [prediction(0.9, 99.6), prediction(0.6, 10.0)];
        let price = Price { input_usd_per_mtok: 10.0, output_usd_per_mtok: 30.0 };
        // Candidate 0 of the route uses head 1, candidate 1 head 0, a third an unknown head.
        let route = [
            Candidate { index: 0, head: 1, price },
            Candidate { index: 1, head: 0, price },
            Candidate { index: 2, head: 7, price },
        ];
        let scored = score(&predictions, &route, 1_000, Tradeoff::BALANCED);
        assert_eq!(scored.len(), 2);
        // 1,000 prompt tokens at 10 + round(99.6) = 100 output tokens at 30, per million.
        assert!((scored[1].cost_usd - (10_000.0 + 3_000.0) / 1e6).abs() < 1e-15);
        assert!((scored[0].cost_usd - (10_000.0 + 300.0) / 1e6).abs() < 1e-15);
        let expected = 0.9f32 as f64 - 0.05 * 0.013 * 1_000.0 - 0.02 * 2.0;
        assert!((scored[1].utility - expected).abs() < 1e-9, "{}", scored[1].utility);
    }

    #[test]
    fn tradeoff_flips_the_choice_when_costs_differ() {
        let pick = |t: Tradeoff| {
            let s = [scored(0, 0.9, 0.02, t), scored(1, 0.7, 0.0005, t)];
            choose(&s, None, &Exploration::OFF, 0.5).map(|c| c.ranking[0])
        };
        assert_eq!(pick(Tradeoff::BEST), Some(0));
        assert_eq!(pick(Tradeoff::CHEAP), Some(1));
    }

    #[test]
    fn overrides_parse_and_reject_nonsense() {
        let base = Tradeoff::BALANCED;
        assert_eq!(Tradeoff::parse_override("cheap", base).ok(), Some(Tradeoff::CHEAP));
        let t = Tradeoff::parse_override("cost=0.5, latency=0.1", base).expect("valid");
        assert_eq!((t.quality, t.cost, t.latency), (1.0, 0.5, 0.1));
        assert!(Tradeoff::parse_override("cost=-1", base).is_err());
        assert!(Tradeoff::parse_override("speed=1", base).is_err());
        assert!(Tradeoff::parse_override("cost", base).is_err());
        assert!(Tradeoff::parse_override("cost=abc", base).is_err());
    }

    #[test]
    fn propensities_match_epsilon_greedy() {
        let t = Tradeoff::BEST;
        let s = [scored(0, 0.9, 0.0, t), scored(1, 0.5, 0.0, t), scored(2, 0.4, 0.0, t)];
        let best = choose(&s, None, &Exploration::epsilon_greedy(0.3), 0.0).expect("choice");
        assert_eq!(best.ranking, vec![0, 1, 2]);
        assert!((best.propensity - 0.8).abs() < 1e-12);
        assert!(!best.explored);
        let explored = choose(&s, None, &Exploration::epsilon_greedy(0.3), 0.95).expect("choice");
        assert_eq!(explored.ranking, vec![2, 0, 1]);
        assert!((explored.propensity - 0.1).abs() < 1e-12);
        assert!(explored.explored);
        let off = choose(&s, None, &Exploration::OFF, 0.999).expect("choice");
        assert_eq!((off.ranking[0], off.propensity), (0, 1.0));
    }

    #[test]
    fn empirical_choice_frequencies_follow_propensities() {
        let t = Tradeoff::BEST;
        let s = [scored(0, 0.9, 0.0, t), scored(1, 0.5, 0.0, t)];
        let mut counts = [0usize; 2];
        let n = 10_000;
        for i in 0..n {
            let draw = (i as f64 + 0.5) / n as f64;
            let choice = choose(&s, None, &Exploration::epsilon_greedy(0.2), draw).expect("choice");
            counts[choice.ranking[0]] += 1;
        }
        assert_eq!(counts[1], 1_000); // ε/n = 0.1 of the mass
    }

    #[test]
    fn softmax_explores_near_ties_more_than_clear_choices() {
        let t = Tradeoff::BEST;
        let explore = Exploration::softmax(0.05, 0.5);
        let near = [scored(0, 0.80, 0.0, t), scored(1, 0.79, 0.0, t)];
        let far = [scored(0, 0.80, 0.0, t), scored(1, 0.40, 0.0, t)];
        let explored_share = |s: &[Scored]| {
            let c = choose(s, None, &explore, 0.0).expect("choice");
            c.probabilities.iter().skip(1).map(|(_, p)| p).sum::<f64>()
        };
        // exp(-0.2) / (1 + exp(-0.2)) = 0.450 against exp(-8) / (1 + exp(-8)) = 0.000335.
        assert!((explored_share(&near) - 0.4502).abs() < 1e-3, "{}", explored_share(&near));
        assert!(explored_share(&far) < 1e-3, "{}", explored_share(&far));
    }

    #[test]
    fn exploration_budget_caps_share_and_extra_cost() {
        let t = Tradeoff::BEST;
        // Three near-equal candidates would share the mass; the cap leaves the best 0.9.
        let s = [scored(0, 0.80, 0.001, t), scored(1, 0.80, 0.002, t), scored(2, 0.80, 0.010, t)];
        let capped = choose(&s, None, &Exploration::softmax(0.05, 0.1), 0.0).expect("choice");
        let p: Vec<f64> = capped.probabilities.iter().map(|(_, p)| *p).collect();
        assert!((p[0] - 0.9).abs() < 1e-12 && (p[1] - 0.05).abs() < 1e-12 && (p[2] - 0.05).abs() < 1e-12, "{p:?}");
        // Candidate 2 costs 0.009 more than the best: above a 0.005 budget, never explored.
        let budget = Exploration { max_extra_cost_usd: Some(0.005), ..Exploration::softmax(0.05, 1.0) };
        let c = choose(&s, None, &budget, 0.0).expect("choice");
        let of = |k: usize| c.probabilities.iter().find(|(i, _)| *i == k).map(|(_, p)| *p);
        assert_eq!(of(2), Some(0.0));
        assert!((of(0).unwrap_or(0.0) - 0.5).abs() < 1e-12);
        for i in 0..1_000 {
            let pick = choose(&s, None, &budget, (i as f64 + 0.5) / 1_000.0).expect("choice");
            assert_ne!(pick.ranking[0], 2);
        }
    }

    #[test]
    fn softmax_propensities_are_the_empirical_frequencies() {
        let t = Tradeoff::BEST;
        let s = [scored(0, 0.8, 0.0, t), scored(1, 0.75, 0.0, t), scored(2, 0.7, 0.0, t)];
        let explore = Exploration::softmax(0.05, 0.6);
        let n = 100_000;
        let mut counts = [0usize; 3];
        let mut logged = [0.0f64; 3];
        for i in 0..n {
            let choice = choose(&s, None, &explore, (i as f64 + 0.5) / n as f64).expect("choice");
            counts[choice.ranking[0]] += 1;
            logged[choice.ranking[0]] = choice.propensity;
            let total: f64 = choice.probabilities.iter().map(|(_, p)| p).sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
        for k in 0..3 {
            let empirical = counts[k] as f64 / n as f64;
            assert!((empirical - logged[k]).abs() < 1e-4, "candidate {k}: {empirical} vs {}", logged[k]);
        }
        // Weights 1, e^-1, e^-2 → 0.665, 0.245, 0.090.
        assert!((logged[0] - 0.6652).abs() < 1e-3, "{logged:?}");
    }

    #[test]
    fn a_challengers_share_is_logged_as_the_mixture_and_drawn_as_logged() {
        let t = Tradeoff::BEST;
        // The incumbent prefers 0, the challenger 2.
        let incumbent = [scored(0, 0.8, 0.0, t), scored(1, 0.75, 0.0, t), scored(2, 0.6, 0.0, t)];
        let challenger = [scored(0, 0.6, 0.0, t), scored(1, 0.7, 0.0, t), scored(2, 0.9, 0.0, t)];
        let explore = Exploration::softmax(0.05, 0.3);
        let share = 0.2;
        let alone = |s: &[Scored]| choose(s, None, &explore, 0.0).expect("choice");
        let (p_inc, p_chal) = (alone(&incumbent), alone(&challenger));
        let p = |c: &Choice, k: usize| c.probabilities.iter().find(|(i, _)| *i == k).map_or(0.0, |(_, p)| *p);
        let n = 100_000;
        let mut counts = [0usize; 3];
        let mut logged = [0.0f64; 3];
        let mut explored = 0usize;
        for i in 0..n {
            let c = choose_with_challenger(&incumbent, &challenger, None, &explore, share, (i as f64 + 0.5) / n as f64).expect("choice");
            counts[c.ranking[0]] += 1;
            logged[c.ranking[0]] = c.propensity;
            explored += usize::from(c.explored);
            let total: f64 = c.probabilities.iter().map(|(_, p)| p).sum();
            assert!((total - 1.0).abs() < 1e-12, "{total}");
            assert_eq!(c.ranking.len(), 3);
        }
        for k in 0..3 {
            let mixture = (1.0 - share) * p(&p_inc, k) + share * p(&p_chal, k);
            assert!((logged[k] - mixture).abs() < 1e-12, "candidate {k}: logged {} vs mixture {mixture}", logged[k]);
            let empirical = counts[k] as f64 / n as f64;
            assert!((empirical - mixture).abs() < 1e-3, "candidate {k}: drawn {empirical} vs logged {mixture}");
        }
        // The challenger's favourite is logged at no less than share × its own probability.
        assert!(logged[2] >= share * p(&p_chal, 2) - 1e-12);
        assert_eq!(explored, n - counts[0]);
        // No share: exactly the incumbent's choice.
        let off = choose_with_challenger(&incumbent, &challenger, None, &explore, 0.0, 0.5).expect("choice");
        assert_eq!(off, choose(&incumbent, None, &explore, 0.5 ).expect("choice"));
    }

    #[test]
    fn max_cost_drops_expensive_candidates_but_never_all() {
        let t = Tradeoff::BEST;
        let s = [scored(0, 0.9, 0.02, t), scored(1, 0.7, 0.001, t)];
        assert_eq!(choose(&s, Some(0.005), &Exploration::OFF, 0.0).map(|c| c.ranking), Some(vec![1]));
        assert_eq!(choose(&s, Some(0.0001), &Exploration::OFF, 0.0).map(|c| c.ranking), Some(vec![1]));
        assert_eq!(choose(&[], None, &Exploration::OFF, 0.0), None);
    }
}
