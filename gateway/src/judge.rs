//! `switchyard judge`: offline labelling of logged answers by a model (LLM-as-a-judge), so
//! the learning loop has feedback even where users send none.
//!
//! It reads answered requests whose prompt and answer the log kept (`[database]
//! store_prompts = true`; streamed answers are not kept) and that carry no judge rating yet,
//! asks the `[judge] model` (any configured model, through its provider) to score each from 0
//! to 10, and stores score / 10 as feedback with source `judge`. Re-running rates only what
//! is new. A reply without a readable score is counted and skipped, never stored as a guess.

use std::time::Duration;

use http::HeaderMap;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::Config;
use crate::error::Error;
use crate::openai::ChatRequest;
use crate::providers::{CallTimeouts, UpstreamClient, UpstreamResponse};
use crate::registry::{Registry, Target};
use crate::store::{Feedback, LogStore, Store};

/// The feedback source judge ratings are stored under.
pub const SOURCE: &str = "judge";

/// The line the judge is asked to end with; the mock upstream recognises it and plays judge.
pub const SCORE_INSTRUCTION: &str = "Reply with one line: \"Score: N\", N an integer from 0 (useless or wrong) to 10 (correct and helpful).";

/// The line the cache's audit judge is asked to end with (the mock recognises it too).
pub const VERDICT_INSTRUCTION: &str = "Reply with one line: \"Verdict: SAME\" if the candidate says what the reference says (same facts, choices, results), else \"Verdict: DIFFERENT\".";

/// The prompt asking whether a cached answer (`candidate`, to a similar question) serves
/// `question` as the upstream's fresh answer (`reference`) does.
pub fn verdict_messages(question: &str, reference: &str, candidate: &str) -> Value {
    json!([
        {"role": "system", "content": "You check a cache of an AI assistant's answers. Be strict: a different number, choice, name or conclusion is DIFFERENT; wording is not."},
        {"role": "user", "content": format!(
            "<question>\n{question}\n</question>\n<reference>\n{reference}\n</reference>\n<candidate>\n{candidate}\n</candidate>\n{VERDICT_INSTRUCTION}"
        )},
    ])
}

/// `Verdict: SAME` → true, `Verdict: DIFFERENT` → false (the last verdict in the reply).
pub fn parse_verdict(reply: &str) -> Option<bool> {
    let at = reply.rfind("Verdict:")?;
    let word: String = reply[at + "Verdict:".len()..].trim_start().chars().take_while(char::is_ascii_alphabetic).collect();
    match word.to_ascii_uppercase().as_str() {
        "SAME" => Some(true),
        "DIFFERENT" => Some(false),
        _ => None,
    }
}

/// Asks `judge` whether `candidate` says what `reference` says for `question`; `None` when
/// the call fails or the reply has no verdict.
pub async fn same_answer(
    http: &UpstreamClient,
    judge: &crate::registry::ModelEntry,
    question: &str,
    reference: &str,
    candidate: &str,
) -> Option<bool> {
    match ask(http, judge, verdict_messages(question, reference, candidate)).await {
        Ok(reply) => reply.as_deref().and_then(parse_verdict),
        Err(e) => {
            tracing::warn!(error = %e, "cache audit judge call failed");
            None
        }
    }
}

/// How long connecting to the judge's upstream may take.
const JUDGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a judge may take: it answers offline work or an audit the client does not wait on.
const JUDGE_TIMEOUTS: CallTimeouts = CallTimeouts { first_byte: Duration::from_secs(60), body: Duration::from_secs(120) };

/// One deterministic (temperature 0) call of the judge model with `messages`; its reply's
/// text (`None` for a reply without text).
async fn ask(http: &UpstreamClient, judge: &crate::registry::ModelEntry, messages: Value) -> Result<Option<String>, Error> {
    let body = json!({"model": judge.upstream_model, "messages": messages, "temperature": 0});
    let request = ChatRequest::parse(body.to_string())?;
    match judge.provider.chat(http, &request, &judge.upstream_model, &HeaderMap::new(), JUDGE_TIMEOUTS).await? {
        UpstreamResponse::Json { body, .. } => Ok(crate::openai::answer_text(&body)),
        UpstreamResponse::Stream(_) => Ok(None),
    }
}

/// What one run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct JudgeReport {
    pub considered: usize,
    pub rated: usize,
    /// Replies without a readable score.
    pub unparsed: usize,
    /// Judge calls that failed (upstream errors, timeouts).
    pub failed: usize,
}

/// The judge's prompt for one logged exchange.
pub fn judge_messages(prompt: &str, answer: &str) -> Value {
    json!([
        {"role": "system", "content": "You grade answers of an AI assistant. Judge correctness first, then helpfulness. Be strict."},
        {"role": "user", "content": format!(
            "Rate how well the answer serves the request.\n<request>\n{prompt}\n</request>\n<answer>\n{answer}\n</answer>\n{SCORE_INSTRUCTION}"
        )},
    ])
}

/// `Score: N` (0..10, decimals allowed) anywhere in the reply, as 0..1.
pub fn parse_score(reply: &str) -> Option<f64> {
    let at = reply.rfind("Score:")?;
    let rest = reply[at + "Score:".len()..].trim_start();
    let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let value: f64 = number.parse().ok()?;
    (0.0..=10.0).contains(&value).then_some(value / 10.0)
}

/// Rates up to `limit` unrated logged answers with `model` (default: `[judge] model`).
pub async fn run(config: &Config, model: Option<&str>, limit: usize) -> Result<JudgeReport, Error> {
    let name = model
        .map(str::to_owned)
        .or_else(|| config.judge.model.clone())
        .ok_or_else(|| Error::Config("no judge model: set [judge] model or pass --model".into()))?;
    let registry = Registry::build(config, None)?;
    let Target::Model(judge) = registry.resolve(&name)? else {
        return Err(Error::Config(format!("judge `{name}` is a route; name a model")));
    };
    let store = Store::open(&config.database)?;
    store.migrate().await?;
    let http = UpstreamClient::new(JUDGE_CONNECT_TIMEOUT)?;
    let mut report = JudgeReport::default();
    let rows = store.unrated_answers(SOURCE, i64::try_from(limit).unwrap_or(i64::MAX)).await?;
    for (request_id, prompt, answer) in rows {
        report.considered += 1;
        let reply = match ask(&http, &judge, judge_messages(&prompt, &answer)).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, %request_id, "judge call failed");
                report.failed += 1;
                continue;
            }
        };
        let Some(score) = reply.as_deref().and_then(parse_score) else {
            tracing::warn!(%request_id, reply = reply.as_deref().unwrap_or(""), "judge reply has no score");
            report.unparsed += 1;
            continue;
        };
        store
            .insert_feedback(&Feedback {
                request_id,
                score,
                source: SOURCE.into(),
                comment: Some(format!("{name}: {}", reply.unwrap_or_default().chars().take(200).collect::<String>())),
                created_at: crate::store::now(),
            })
            .await?;
        report.rated += 1;
    }
    store.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_verdict_and_refuses_what_is_not_one() {
        assert_eq!(parse_verdict("Verdict: SAME"), Some(true));
        assert_eq!(parse_verdict("They differ in the year.\nVerdict: different"), Some(false));
        assert_eq!(parse_verdict("Verdict: maybe"), None);
        assert_eq!(parse_verdict("SAME"), None);
        let prompt = verdict_messages("q", "r", "c")[1]["content"].as_str().map(str::to_owned).unwrap_or_default();
        assert!(prompt.contains("<reference>\nr\n</reference>") && prompt.ends_with(VERDICT_INSTRUCTION));
    }

    #[test]
    fn reads_the_score_and_refuses_what_is_not_one() {
        assert_eq!(parse_score("Score: 7"), Some(0.7));
        assert_eq!(parse_score("Thinking… Score: 10\n"), Some(1.0));
        assert_eq!(parse_score("Score: 2.5"), Some(0.25));
        assert_eq!(parse_score("Score: 11"), None);
        assert_eq!(parse_score("Score: high"), None);
        assert_eq!(parse_score("7/10"), None);
    }
}
