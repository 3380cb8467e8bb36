//! What happened to one request: the row the outcome log stores and training learns from.

use std::time::Instant;

use uuid::Uuid;

use crate::error::Error;
use crate::openai::Usage;
use crate::registry::ModelEntry;

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

    pub fn finish_error(&mut self, error: &Error, started: Instant) {
        self.status = error.status().as_u16();
        self.error_class = Some(error.class());
        self.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        self.record();
    }

    fn record(&self) {
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
    }
}
