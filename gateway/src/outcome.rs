//! What happened to one request: the row the outcome log stores and training learns from.
//!
//! `finish_ok` / `finish_error` hand the row to the log writer (see [`RequestOutcome::log_to`]).
//! An outcome dropped unfinished (the client went away mid-stream) is recorded as status 499,
//! so every routed request leaves a row.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Error;
use crate::limits::Admission;
use crate::openai::Usage;
use crate::registry::ModelEntry;
use crate::store::{embedding_to_bytes, DecisionRecord, LogHandle, LogRow};

/// Status recorded when the client disconnected before the answer was complete.
pub const STATUS_CLIENT_CLOSED: u16 = 499;

#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub request_id: Uuid,
    pub route: Option<String>,
    pub model: String,
    pub provider: String,
    pub stream: bool,
    pub status: u16,
    pub error_class: Option<&'static str>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub first_token_ms: Option<f64>,
    /// When the request arrived: the time its UUIDv7 id was made (milliseconds), for the log's
    /// time column.
    pub created_at: DateTime<Utc>,
    /// Caller, from the virtual key (`None` for open access and the master key).
    pub tenant: Option<String>,
    pub key_id: Option<Uuid>,
    /// How the router decided (candidates with their predictions) and failed tries.
    pub candidates: Option<DecisionRecord>,
    /// Probability the policy gave the chosen model (for off-policy training).
    pub propensity: Option<f64>,
    /// Selector checkpoint / policy version that made the choice.
    pub checkpoint_version: Option<String>,
    /// What a shadow policy would have chosen.
    pub shadow_choice: Option<String>,
    /// Hex blake3 of the prompt.
    pub prompt_hash: Option<String>,
    /// The query embedding, stored so that training need not embed again.
    pub embedding: Option<Arc<[f32]>>,
    /// The prompt; kept in the log only when `[database] store_prompts = true`.
    pub prompt_text: Option<String>,
    /// The answer text (non-stream answers), kept under the same rule.
    pub answer_text: Option<String>,
    /// Cache lookup result (`miss`, `exact`, `semantic`, …).
    pub cache_result: Option<&'static str>,
    log: LogSink,
    limits: LimitCharge,
    started: Instant,
}

/// Limits to charge with this request's tokens and cost; like [`LogSink`], a clone charges
/// nothing.
#[derive(Debug, Default)]
struct LimitCharge(Option<Admission>);

impl Clone for LimitCharge {
    fn clone(&self) -> Self {
        Self(None)
    }
}

/// Where a finished outcome goes. A clone of an outcome is a snapshot and records nothing,
/// so that one request never leaves two rows.
#[derive(Debug, Default)]
struct LogSink(Option<LogHandle>);

impl Clone for LogSink {
    fn clone(&self) -> Self {
        Self(None)
    }
}

impl RequestOutcome {
    pub fn new(request_id: Uuid, route: Option<String>, model: &ModelEntry, stream: bool) -> Self {
        Self {
            request_id,
            route,
            model: model.name.clone(),
            provider: model.provider_name.clone(),
            stream,
            status: 0,
            error_class: None,
            usage: None,
            cost_usd: None,
            latency_ms: 0.0,
            first_token_ms: None,
            created_at: crate::store::arrival_of(request_id).unwrap_or_else(crate::store::now),
            tenant: None,
            key_id: None,
            candidates: None,
            propensity: None,
            checkpoint_version: None,
            shadow_choice: None,
            prompt_hash: None,
            embedding: None,
            prompt_text: None,
            answer_text: None,
            cache_result: None,
            log: LogSink(None),
            limits: LimitCharge(None),
            started: Instant::now(),
        }
    }

    /// Sends the row to the outcome log when the request finishes.
    pub fn log_to(mut self, log: LogHandle) -> Self {
        self.log = LogSink(Some(log));
        self
    }

    /// Charges the request's tokens and cost to these limits when it finishes.
    pub fn charge_limits(mut self, admission: Option<Admission>) -> Self {
        self.limits = LimitCharge(admission);
        self
    }

    /// The row the outcome log stores, moved out of the outcome. It is taken once, when the
    /// request finishes (after which the outcome is only dropped), so the strings, a routed
    /// request's decision record and a kept prompt and answer are handed over, not copied.
    fn take_row(&mut self) -> LogRow {
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        LogRow {
            id: self.request_id,
            created_at: self.created_at,
            tenant: self.tenant.take(),
            key_id: self.key_id,
            route: self.route.take(),
            provider: std::mem::take(&mut self.provider),
            model: std::mem::take(&mut self.model),
            stream: self.stream,
            candidates: self.candidates.take(),
            propensity: self.propensity,
            checkpoint_version: self.checkpoint_version.take(),
            shadow_choice: self.shadow_choice.take(),
            prompt_hash: self.prompt_hash.take(),
            embedding: self.embedding.take().as_deref().map(embedding_to_bytes),
            prompt_text: self.prompt_text.take(),
            answer_text: self.answer_text.take(),
            prompt_tokens: self.usage.map(|u| tokens(u.prompt_tokens)),
            completion_tokens: self.usage.map(|u| tokens(u.completion_tokens)),
            cost_usd: self.cost_usd,
            latency_ms: self.latency_ms,
            first_token_ms: self.first_token_ms,
            status: i32::from(self.status),
            error_class: self.error_class.map(str::to_owned),
            cache_result: self.cache_result.map(str::to_owned),
        }
    }

    pub fn finish_ok(&mut self, usage: Option<Usage>, model: &ModelEntry, started: Instant, first_token_ms: Option<f64>) {
        self.status = 200;
        self.usage = usage;
        self.cost_usd = usage.map(|u| model.cost_usd(u.prompt_tokens, u.completion_tokens));
        self.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        self.first_token_ms = first_token_ms.or(Some(self.latency_ms));
        self.record();
    }

    /// Served from the cache: no upstream call, nothing spent.
    pub fn finish_cache_hit(&mut self, started: Instant) {
        self.status = 200;
        self.cost_usd = Some(0.0);
        self.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        self.first_token_ms = Some(self.latency_ms);
        self.record();
    }

    pub fn finish_error(&mut self, error: &Error, started: Instant) {
        self.status = error.status().as_u16();
        self.error_class = Some(error.class());
        self.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        self.record();
    }

    fn record(&mut self) {
        if let (Some(admission), Some(usage)) = (self.limits.0.take(), self.usage) {
            admission.charge(usage.prompt_tokens.saturating_add(usage.completion_tokens), self.cost_usd.unwrap_or(0.0));
        }
        let log = self.log.0.take();
        if log.is_some() {
            crate::metrics::METRICS.observe(self);
        }
        tracing::debug!(
            request_id = %self.request_id,
            route = self.route.as_deref().unwrap_or("-"),
            model = %self.model,
            status = self.status,
            error_class = self.error_class.unwrap_or("-"),
            prompt_tokens = self.usage.map(|u| u.prompt_tokens).unwrap_or(0),
            completion_tokens = self.usage.map(|u| u.completion_tokens).unwrap_or(0),
            cost_usd = self.cost_usd.unwrap_or(0.0),
            latency_ms = self.latency_ms,
            first_token_ms = self.first_token_ms.unwrap_or(0.0),
            "request finished"
        );
        // Last: the row takes the outcome's fields.
        if let Some(log) = log {
            log.push_with(|| self.take_row());
        }
    }
}

impl Drop for RequestOutcome {
    fn drop(&mut self) {
        if self.log.0.is_some() {
            self.status = STATUS_CLIENT_CLOSED;
            self.error_class = Some("client_closed");
            self.latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
            self.record();
        }
    }
}
