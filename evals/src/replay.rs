//! `switchyard eval replay`: the test prompts sent through a running gateway whose route
//! holds the checkpoint's candidates (served by the mock upstream in replay mode), compared
//! with the offline choice at the same trade-off.
//!
//! This crate does not depend on the gateway (the `switchyard` binary depends on both): it
//! writes the gateway config, drives the running gateway over HTTP and compares; the binary
//! starts the mock upstream and the gateway in-process between [`ReplayPlan::gateway_config`]
//! and [`drive`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use router_model::policy::Tradeoff;
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::metrics::Point;
use crate::offline::EvalSet;

/// Route name in the generated config.
pub const ROUTE: &str = "eval";

/// What is replayed, and what the offline policy chose for it.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub tradeoff: Tradeoff,
    /// Candidate index per prompt of the set, at `tradeoff`.
    pub offline: Vec<usize>,
}

impl ReplayPlan {
    pub fn new(set: &EvalSet, tradeoff: Tradeoff) -> Self {
        Self {
            tradeoff,
            offline: set.choices(tradeoff),
        }
    }

    /// A gateway config: one OpenAI-compatible provider at the mock, every candidate at its
    /// price, and route [`ROUTE`] over them in the set's order with exploration 0 and a
    /// decision deadline long enough that no request is shed.
    pub fn gateway_config(&self, set: &EvalSet, mock: SocketAddr, checkpoint: &Path, embedder_dir: Option<&Path>) -> String {
        let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let mut toml = String::new();
        toml.push_str("[database]\nurl = \"sqlite::memory:\"\n\n");
        toml.push_str(&format!(
            "[router]\ncheckpoint = {}\ndecision_timeout_ms = 30000\nreload_poll_ms = 0\n",
            quote(&checkpoint.to_string_lossy())
        ));
        if let Some(dir) = embedder_dir {
            toml.push_str(&format!("embedder_dir = {}\n", quote(&dir.to_string_lossy())));
        }
        toml.push_str(&format!("\n[providers.replay]\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\n"));
        for (name, c) in set.candidates.iter().zip(&set.route) {
            toml.push_str(&format!(
                "[models.{}]\nprovider = \"replay\"\ninput_usd_per_mtok = {:?}\noutput_usd_per_mtok = {:?}\n\n",
                quote(name),
                c.price.input_usd_per_mtok,
                c.price.output_usd_per_mtok
            ));
        }
        let list: Vec<String> = set.candidates.iter().map(|c| quote(c)).collect();
        toml.push_str(&format!(
            "[routes.{ROUTE}]\ncandidates = [{}]\ndefault = {}\ntradeoff = {}\nexploration = 0.0\n",
            list.join(", "),
            list[0],
            quote(&self.tradeoff.to_string())
        ));
        toml
    }
}

/// What the gateway answered for one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    pub model: String,
    /// `x-switchyard-decision`: `selected` unless something went wrong.
    pub decision: String,
    pub decision_ms: Option<f64>,
}

/// Sends every prompt of `set`, one at a time, to route [`ROUTE`] of the gateway at `addr`.
pub async fn drive(addr: SocketAddr, set: &EvalSet) -> Result<Vec<Served>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::Replay(e.to_string()))?;
    let url = format!("http://{addr}/v1/chat/completions");
    let mut out = Vec::with_capacity(set.len());
    let bar = training::progress::bar(set.len(), "replaying");
    for (i, row) in set.rows.iter().enumerate() {
        bar.inc(1);
        let body = json!({"model": ROUTE, "messages": [{"role": "user", "content": row.prompt}]});
        let response = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::Replay(format!("prompt {i}: {e}")))?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let status = response.status();
        let (model, decision, decision_ms) =
            (header("x-switchyard-model"), header("x-switchyard-decision"), header("x-switchyard-decision-ms"));
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::Replay(format!("prompt {i}: gateway answered {status}: {text}")));
        }
        let model = model.ok_or_else(|| Error::Replay(format!("prompt {i}: no x-switchyard-model header")))?;
        out.push(Served {
            model,
            decision: decision.unwrap_or_default(),
            decision_ms: decision_ms.and_then(|d| d.parse().ok()),
        });
    }
    bar.finish_and_clear();
    Ok(out)
}

/// One replayed prompt.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRecord {
    /// Position among the split's rows of the dataset (as the training importer reads them).
    pub index: usize,
    pub task: String,
    pub offline: String,
    pub served: String,
    pub decision: String,
    /// The dataset's label for the served model.
    pub realised_quality: f64,
    pub realised_cost: f64,
}

/// Served against offline at one trade-off.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub dataset: String,
    pub tradeoff: String,
    pub prompts: usize,
    /// Share of prompts where the gateway served the offline choice.
    pub agreement: f64,
    pub offline: Point,
    pub served: Point,
    pub quality_difference: f64,
    pub cost_difference: f64,
    pub decisions: BTreeMap<String, usize>,
    pub decision_ms_p50: Option<f64>,
    pub decision_ms_p99: Option<f64>,
    pub records: Vec<ReplayRecord>,
}

/// Compares `served` (from [`drive`]) with `plan`'s offline choices.
pub fn compare(set: &EvalSet, plan: &ReplayPlan, served: &[Served]) -> Result<ReplayReport> {
    if served.len() != set.len() {
        return Err(Error::Replay(format!("{} answers for {} prompts", served.len(), set.len())));
    }
    let mut records = Vec::with_capacity(set.len());
    let mut served_choices = Vec::with_capacity(set.len());
    let mut decisions: BTreeMap<String, usize> = BTreeMap::new();
    for (i, s) in served.iter().enumerate() {
        let j = set
            .index_of(&s.model)
            .ok_or_else(|| Error::Replay(format!("prompt {i}: the gateway served `{}`, not a candidate", s.model)))?;
        served_choices.push(j);
        *decisions.entry(s.decision.clone()).or_default() += 1;
        records.push(ReplayRecord {
            index: set.split_index[i],
            task: set.rows[i].task.clone(),
            offline: set.candidates[plan.offline[i]].clone(),
            served: s.model.clone(),
            decision: s.decision.clone(),
            realised_quality: set.quality[i][j],
            realised_cost: set.cost[i][j],
        });
    }
    let agree = records.iter().filter(|r| r.offline == r.served).count();
    let (offline, realised) = (set.point(&plan.offline), set.point(&served_choices));
    let ms: Vec<f64> = served.iter().filter_map(|s| s.decision_ms).collect();
    Ok(ReplayReport {
        dataset: set.dataset.clone(),
        tradeoff: plan.tradeoff.to_string(),
        prompts: set.len(),
        agreement: agree as f64 / set.len().max(1) as f64,
        quality_difference: realised.quality - offline.quality,
        cost_difference: realised.cost - offline.cost,
        offline,
        served: realised,
        decisions,
        decision_ms_p50: crate::metrics::percentile(&ms, 0.5),
        decision_ms_p99: crate::metrics::percentile(&ms, 0.99),
        records,
    })
}

impl ReplayReport {
    pub fn markdown(&self, command: &str) -> String {
        let mut s = format!(
            "# Replay through the gateway: {}\n\nProduced by\n\n```sh\n{command}\n```\n\n",
            self.dataset
        );
        s.push_str(&format!(
            "{} test prompts sent one at a time over HTTP to a running gateway (route `{ROUTE}`, exploration 0, trade-off `{}`), \
             its candidates served by the mock upstream replaying the dataset's recorded answers. Realised quality and cost are the \
             dataset's label and recorded cost for the model named by `x-switchyard-model`.\n\n",
            self.prompts, self.tradeoff
        ));
        s.push_str("| | quality | USD per 1k requests |\n|---|---|---|\n");
        s.push_str(&format!("| offline (same policy, same trade-off) | {:.4} | {:.4} |\n", self.offline.quality, self.offline.cost * 1e3));
        s.push_str(&format!("| served by the gateway | {:.4} | {:.4} |\n", self.served.quality, self.served.cost * 1e3));
        s.push_str(&format!("| difference | {:+.4} | {:+.4} |\n\n", self.quality_difference, self.cost_difference * 1e3));
        s.push_str(&format!(
            "Served model = offline choice on {:.1}% of prompts ({} of {}). Decisions: {}.",
            self.agreement * 100.0,
            self.records.iter().filter(|r| r.offline == r.served).count(),
            self.prompts,
            self.decisions.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        ));
        if let (Some(p50), Some(p99)) = (self.decision_ms_p50, self.decision_ms_p99) {
            s.push_str(&format!(" Gateway decision time (`x-switchyard-decision-ms`): p50 {p50:.1} ms, p99 {p99:.1} ms."));
        }
        s.push('\n');
        let disagreements: Vec<&ReplayRecord> = self.records.iter().filter(|r| r.offline != r.served).take(20).collect();
        if !disagreements.is_empty() {
            s.push_str("\n| prompt | task | offline | served |\n|---|---|---|---|\n");
            for r in disagreements {
                s.push_str(&format!("| {} | {} | {} | {} |\n", r.index, r.task, r.offline, r.served));
            }
        }
        s
    }
}
