//! The offline evaluation set: test prompts of one dataset with the selector's predictions
//! and every candidate's realised quality and cost, and the choices the gateway's policy makes
//! on them at any trade-off.
//!
//! Choices go through `router_model::policy::{score, choose}` — the functions the gateway
//! calls per request — so a point on the offline curve is what the gateway would serve at
//! that trade-off (the replay checks it).

use std::time::Instant;

use router_model::policy::{self, Candidate, Scored, Tradeoff};
use router_model::{Checkpoint, Embedder, Prediction, RequestFeatures};
use training::embed_cache::EmbeddingCache;
use training::{Dataset, Row, Split};

use crate::error::{Error, Result};
use crate::metrics::Point;
use crate::prices::PriceTable;

/// How realised cost was obtained.
pub const COST_RECORDED: &str = "recorded per prompt by the dataset";
pub const COST_DERIVED: &str = "list price × (prompt tokens + answer tokens), tokens estimated at 4 characters";

/// Texts → embeddings (e.g. [`cached`]).
pub type Embed<'a> = dyn FnMut(&[&str]) -> Result<Vec<Vec<f32>>> + 'a;

/// Test prompts of one dataset, ready to route.
#[derive(Clone)]
pub struct EvalSet {
    pub dataset: String,
    pub rows: Vec<Row>,
    /// Each row's position among the split's rows of the dataset (before rows are left out).
    pub split_index: Vec<usize>,
    /// Candidate ids, in route order (the order ties are broken in).
    pub candidates: Vec<String>,
    /// The candidates as the policy sees them (`index` = position in `candidates`).
    pub route: Vec<Candidate>,
    /// Per prompt, the checkpoint's predictions for every head.
    pub predictions: Vec<Vec<Prediction>>,
    /// Per prompt, the query embedding (unit length), for the kNN and cluster baselines.
    pub embeddings: Vec<Vec<f32>>,
    pub prompt_tokens: Vec<u32>,
    /// `[prompt][candidate]` realised quality (0..1) and cost (USD).
    pub quality: Vec<Vec<f64>>,
    pub cost: Vec<Vec<f64>>,
    /// Test rows left out because a candidate had no label or no cost on them.
    pub dropped: usize,
    pub cost_source: &'static str,
}

impl EvalSet {
    /// Prompts of `split` of `dataset` (the first `limit` when given). Candidates are the
    /// models the checkpoint has a head for, the dataset labels and the price table prices;
    /// `only` narrows them further.
    pub fn build(
        dataset: &Dataset,
        split: Split,
        checkpoint: &Checkpoint,
        prices: &PriceTable,
        only: Option<&[String]>,
        limit: Option<usize>,
        embed: &mut Embed<'_>,
    ) -> Result<Self> {
        let candidates: Vec<String> = checkpoint
            .candidates()
            .iter()
            .filter(|c| dataset.models.contains(*c) && prices.get(c).is_some())
            .filter(|c| only.is_none_or(|o| o.contains(c)))
            .cloned()
            .collect();
        if candidates.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "{}: fewer than two candidates are known to the checkpoint, labelled by the dataset and priced ({candidates:?})",
                dataset.kind
            )));
        }
        let mut route = Vec::with_capacity(candidates.len());
        for (index, c) in candidates.iter().enumerate() {
            let head = checkpoint
                .resolve_candidate(c, None)
                .ok_or_else(|| Error::InvalidInput(format!("checkpoint has no head for {c}")))?
                .index;
            let price = prices.get(c).ok_or_else(|| Error::InvalidInput(format!("no price for {c}")))?;
            route.push(Candidate { index, head, price });
        }
        let mut rows = Vec::new();
        let mut split_index = Vec::new();
        let (mut quality, mut cost, mut prompt_tokens) = (Vec::new(), Vec::new(), Vec::new());
        let mut dropped = 0;
        let mut recorded = true;
        for (position, row) in dataset.rows.iter().filter(|r| r.split == split).enumerate() {
            if limit.is_some_and(|l| rows.len() >= l) {
                break;
            }
            let tokens = RequestFeatures::for_prompt(&row.prompt).prompt_tokens;
            let mut q = Vec::with_capacity(candidates.len());
            let mut c = Vec::with_capacity(candidates.len());
            for (model, cand) in candidates.iter().zip(&route) {
                let Some(outcome) = row.outcomes.get(model) else { break };
                let Some(label) = outcome.quality else { break };
                let realised = match (outcome.cost_usd, outcome.output_tokens) {
                    (Some(usd), _) => Some(usd),
                    (None, Some(out)) => {
                        recorded = false;
                        Some(cand.price.cost_usd(u64::from(tokens), out.round() as u64))
                    }
                    (None, None) => None,
                };
                let Some(realised) = realised else { break };
                q.push(f64::from(label));
                c.push(realised);
            }
            if q.len() != candidates.len() {
                dropped += 1;
                continue;
            }
            quality.push(q);
            cost.push(c);
            prompt_tokens.push(tokens);
            rows.push(row.clone());
            split_index.push(position);
        }
        if rows.is_empty() {
            return Err(Error::InvalidInput(format!("{}: no {split:?} prompts with labels for every candidate", dataset.kind)));
        }
        let texts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
        let vectors = embed(&texts)?;
        let predictions = rows
            .iter()
            .zip(&vectors)
            .map(|(row, v)| checkpoint.predict(v, &RequestFeatures::for_prompt(&row.prompt)))
            .collect::<router_model::Result<Vec<_>>>()?;
        Ok(Self {
            dataset: dataset.kind.name().to_owned(),
            rows,
            split_index,
            candidates,
            route,
            predictions,
            embeddings: vectors,
            prompt_tokens,
            quality,
            cost,
            dropped,
            cost_source: if recorded { COST_RECORDED } else { COST_DERIVED },
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn index_of(&self, model: &str) -> Option<usize> {
        self.candidates.iter().position(|c| c == model)
    }

    /// What the gateway's policy scores for prompt `i` at `tradeoff`.
    pub fn scored(&self, i: usize, tradeoff: Tradeoff) -> Vec<Scored> {
        policy::score(&self.predictions[i], &self.route, self.prompt_tokens[i], tradeoff)
    }

    /// The candidate the policy serves for each prompt at `tradeoff`, exploration off.
    pub fn choices(&self, tradeoff: Tradeoff) -> Vec<usize> {
        (0..self.len())
            .map(|i| policy::choose(&self.scored(i, tradeoff), None, &policy::Exploration::OFF, 0.0).map_or(0, |c| c.ranking[0]))
            .collect()
    }

    /// Like [`Self::choices`], with the route default `default` served whenever no candidate's
    /// predicted utility beats it by `min_advantage` ([`policy::prefer_default_when_unsure`]).
    pub fn choices_with_default(&self, tradeoff: Tradeoff, default: usize, min_advantage: f64) -> Vec<usize> {
        (0..self.len())
            .map(|i| {
                let mut scored = self.scored(i, tradeoff);
                policy::prefer_default_when_unsure(&mut scored, default, min_advantage);
                policy::choose(&scored, None, &policy::Exploration::OFF, 0.0).map_or(0, |c| c.ranking[0])
            })
            .collect()
    }

    /// The single candidate with the highest mean realised utility at `tradeoff` over these
    /// prompts: the route default an operator would pick for that trade-off without a router.
    pub fn best_single(&self, tradeoff: Tradeoff) -> usize {
        let mean = |j: usize| self.quality.iter().zip(&self.cost).map(|(q, c)| tradeoff.utility(q[j], c[j], 0.0)).sum::<f64>();
        (0..self.candidates.len()).max_by(|&a, &b| mean(a).total_cmp(&mean(b))).unwrap_or(0)
    }

    /// The oracle: the same policy fed the realised quality and cost instead of predictions.
    pub fn oracle_choices(&self, tradeoff: Tradeoff) -> Vec<usize> {
        (0..self.len())
            .map(|i| {
                let scored: Vec<Scored> = (0..self.candidates.len())
                    .map(|j| Scored {
                        candidate: j,
                        quality: self.quality[i][j],
                        cost_usd: self.cost[i][j],
                        latency_ms: 0.0,
                        utility: tradeoff.utility(self.quality[i][j], self.cost[i][j], 0.0),
                    })
                    .collect();
                policy::choose(&scored, None, &policy::Exploration::OFF, 0.0).map_or(0, |c| c.ranking[0])
            })
            .collect()
    }

    /// Mean realised quality and cost of `choices`.
    pub fn point(&self, choices: &[usize]) -> Point {
        let n = choices.len().max(1) as f64;
        Point {
            quality: choices.iter().enumerate().map(|(i, &j)| self.quality[i][j]).sum::<f64>() / n,
            cost: choices.iter().enumerate().map(|(i, &j)| self.cost[i][j]).sum::<f64>() / n,
        }
    }

    /// Every prompt to candidate `j`.
    pub fn single(&self, j: usize) -> Point {
        self.point(&vec![j; self.len()])
    }

    /// Realised (strong, weak) quality columns of a pair.
    pub fn pair_columns(&self, strong: usize, weak: usize) -> (Vec<f64>, Vec<f64>) {
        (self.quality.iter().map(|q| q[strong]).collect(), self.quality.iter().map(|q| q[weak]).collect())
    }

    /// Sending the prompts ranked first by `order` (the first `k`) to `strong`, the rest to `weak`.
    pub fn split_point(&self, order: &[usize], k: usize, strong: usize, weak: usize) -> Point {
        self.point(&self.split_choices(order, k, strong, weak))
    }

    /// The choices behind [`Self::split_point`].
    pub fn split_choices(&self, order: &[usize], k: usize, strong: usize, weak: usize) -> Vec<usize> {
        let mut choices = vec![weak; self.len()];
        for &i in &order[..k.min(order.len())] {
            choices[i] = strong;
        }
        choices
    }

    /// Prompt length in characters, the "longer prompt → stronger model" baseline's score.
    pub fn lengths(&self) -> Vec<f64> {
        self.rows.iter().map(|r| r.prompt.chars().count() as f64).collect()
    }
}

/// Embeds through the on-disk cache (`.cache/embeddings`), so a report run embeds each
/// prompt once across runs and across `switchyard train`.
pub fn cached<'a>(cache: &'a mut EmbeddingCache, embedder: &'a dyn Embedder) -> impl FnMut(&[&str]) -> Result<Vec<Vec<f32>>> + 'a {
    move |texts| Ok(cache.embed_all(texts, embedder)?)
}

/// Cost weights of the sweep, in the gateway's units (per USD per 1,000 requests): 0, then
/// 61 steps from 10⁻³ to 10³ — from "quality only" to "cheapest model always".
pub fn cost_weights() -> Vec<f64> {
    std::iter::once(0.0).chain((0..=60).map(|k| 10f64.powf(-3.0 + 6.0 * f64::from(k) / 60.0))).collect()
}

/// The sweep's trade-off at cost weight `lambda`: utility = quality − λ·cost.
pub fn tradeoff_at(lambda: f64) -> Tradeoff {
    Tradeoff {
        quality: 1.0,
        cost: lambda,
        latency: 0.0,
    }
}

/// Decision latency per prompt in ms: embed (one prompt at a time, as a request is) + predict
/// + score + choose, on the caller's thread.
pub fn decision_latency_ms(
    embedder: &dyn Embedder,
    checkpoint: &Checkpoint,
    route: &[Candidate],
    prompts: &[&str],
    tradeoff: Tradeoff,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let started = Instant::now();
        let features = RequestFeatures::for_prompt(prompt);
        let embedding = embedder.embed(prompt)?;
        let predictions = checkpoint.predict(&embedding, &features)?;
        let scored = policy::score(&predictions, route, features.prompt_tokens, tradeoff);
        let choice = policy::choose(&scored, None, &policy::Exploration::OFF, 0.0);
        std::hint::black_box(choice);
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}
