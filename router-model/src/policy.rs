//! From predictions to a choice: the caller's trade-off, availability, a cost ceiling and a
//! little logged exploration.
//!
//! Utility of a candidate = w_q · quality − w_c · cost − w_l · latency, with quality in 0..1,
//! cost in USD per 1,000 requests and latency in seconds, so the weights read as "how much
//! quality (probability of a good answer) is one dollar per thousand requests, or one second,
//! worth". Exploration is ε-greedy: the best candidate with probability 1 − ε + ε/n, any
//! other with ε/n; the chosen candidate's probability is logged as its propensity so
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
}

/// Picks among scored, available candidates. `draw` is a uniform sample in [0, 1)
/// (injected so tests are deterministic). Candidates above `max_cost_usd` are dropped unless
/// none is left, in which case the cheapest is used.
pub fn choose(scored: &[Scored], max_cost_usd: Option<f64>, epsilon: f64, draw: f64) -> Option<Choice> {
    let mut eligible: Vec<&Scored> = scored
        .iter()
        .filter(|s| max_cost_usd.is_none_or(|max| s.cost_usd <= max))
        .collect();
    if eligible.is_empty() {
        let cheapest = scored.iter().min_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd))?;
        eligible.push(cheapest);
    }
    eligible.sort_by(|a, b| b.utility.total_cmp(&a.utility));
    let n = eligible.len();
    let epsilon = if n > 1 { epsilon.clamp(0.0, 1.0) } else { 0.0 };
    let share = epsilon / n as f64;
    // Walk the cumulative distribution: best gets 1 − ε + ε/n, every other ε/n.
    let mut chosen = 0;
    let mut cumulative = 0.0;
    for i in 0..n {
        cumulative += if i == 0 { 1.0 - epsilon + share } else { share };
        if draw < cumulative {
            chosen = i;
            break;
        }
        chosen = i;
    }
    let propensity = if chosen == 0 { 1.0 - epsilon + share } else { share };
    let mut ranking: Vec<usize> = eligible.iter().map(|s| s.candidate).collect();
    let picked = ranking.remove(chosen);
    ranking.insert(0, picked);
    Some(Choice {
        ranking,
        propensity,
        explored: chosen != 0,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

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
            choose(&s, None, 0.0, 0.5).map(|c| c.ranking[0])
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
        let best = choose(&s, None, 0.3, 0.0).expect("choice");
        assert_eq!(best.ranking, vec![0, 1, 2]);
        assert!((best.propensity - 0.8).abs() < 1e-12);
        assert!(!best.explored);
        let explored = choose(&s, None, 0.3, 0.95).expect("choice");
        assert_eq!(explored.ranking, vec![2, 0, 1]);
        assert!((explored.propensity - 0.1).abs() < 1e-12);
        assert!(explored.explored);
        let off = choose(&s, None, 0.0, 0.999).expect("choice");
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
            let choice = choose(&s, None, 0.2, draw).expect("choice");
            counts[choice.ranking[0]] += 1;
        }
        assert_eq!(counts[1], 1_000); // ε/n = 0.1 of the mass
    }

    #[test]
    fn max_cost_drops_expensive_candidates_but_never_all() {
        let t = Tradeoff::BEST;
        let s = [scored(0, 0.9, 0.02, t), scored(1, 0.7, 0.001, t)];
        assert_eq!(choose(&s, Some(0.005), 0.0, 0.0).map(|c| c.ranking), Some(vec![1]));
        assert_eq!(choose(&s, Some(0.0001), 0.0, 0.0).map(|c| c.ranking), Some(vec![1]));
        assert_eq!(choose(&[], None, 0.0, 0.0), None);
    }
}
