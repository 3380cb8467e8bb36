//! Calling upstream: the decision's models in ranking order, each retried on transient
//! failures, until one answers.
//!
//! Only failures that happen before anything reached the client move on: connection errors,
//! timeouts to the first byte, 5xx and 429 (a provider call returns once the first byte has
//! arrived, so a retry can never duplicate output). A model whose breaker is open, or whose
//! provider is at `max_concurrent`, is skipped. A failure the request itself caused (a 400)
//! ends the call at once: another model would refuse it too. Every failed try is recorded in
//! the outcome row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::app::AppState;
use crate::breaker::Failure;
use crate::error::Error;
use crate::openai::ChatRequest;
use crate::outcome::RequestOutcome;
use crate::providers::{CallTimeouts, UpstreamResponse};
use crate::registry::ModelEntry;
use crate::store::FailedAttempt;

/// What the upstream call needs from the request.
pub struct UpstreamCall<'a> {
    /// Named in warnings, so that one can be tied to its request at any log level.
    pub request_id: uuid::Uuid,
    pub state: &'a AppState,
    pub request: &'a ChatRequest,
    /// The client's headers (a provider forwards the ones it passes through).
    pub headers: &'a HeaderMap,
    pub timeouts: CallTimeouts,
}

impl UpstreamCall<'_> {
    /// Tries `ranking` in order; returns the model that answered and its response.
    pub async fn run(
        &self,
        ranking: &[Arc<ModelEntry>],
        outcome: &mut RequestOutcome,
    ) -> Result<(Arc<ModelEntry>, UpstreamResponse), Error> {
        let mut attempts: Vec<FailedAttempt> = Vec::new();
        let result = self.try_in_order(ranking, outcome, &mut attempts).await;
        if !attempts.is_empty() {
            outcome.candidates.get_or_insert_with(Default::default).failed_attempts = attempts;
        }
        result
    }

    async fn try_in_order(
        &self,
        ranking: &[Arc<ModelEntry>],
        outcome: &mut RequestOutcome,
        attempts: &mut Vec<FailedAttempt>,
    ) -> Result<(Arc<ModelEntry>, UpstreamResponse), Error> {
        let breakers = &self.state.breakers;
        let mut last_error = None;
        for model in ranking {
            let permit = match &model.bulkhead {
                Some(bulkhead) => match bulkhead.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        attempts.push(skipped(model, "bulkhead_full"));
                        continue;
                    }
                },
                None => None,
            };
            if !breakers.try_acquire(&model.name) {
                attempts.push(skipped(model, "breaker_open_or_cooldown"));
                continue;
            }
            outcome.model = model.name.clone();
            outcome.provider = model.provider_name.clone();
            match self.call_with_retries(model, attempts).await {
                Ok(upstream) => {
                    breakers.record_success(&model.name);
                    // A stream keeps its provider's bulkhead permit until it ends or is dropped.
                    let upstream = match (upstream, permit) {
                        (UpstreamResponse::Stream(pieces), Some(permit)) => UpstreamResponse::Stream(Box::pin(
                            futures_util::StreamExt::map(pieces, move |piece| {
                                let _held = &permit;
                                piece
                            }),
                        )),
                        (upstream, _) => upstream,
                    };
                    return Ok((model.clone(), upstream));
                }
                Err(error) => match Failure::of(&error) {
                    Some(failure) => {
                        breakers.record_failure(&model.name, failure);
                        let client_request_id = crate::app::client_request_id(self.headers).and_then(|id| id.to_str().ok());
                        tracing::warn!(request_id = %self.request_id, client_request_id, model = %model.name, error = %error, "upstream failed; trying the next model");
                        last_error = Some(error);
                    }
                    _ => {
                        breakers.release(&model.name);
                        return Err(error);
                    }
                },
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::Unavailable(
                "every candidate model is cooling down, its circuit is open or its provider is at max_concurrent".into(),
            )
        }))
    }

    /// One model: the first try, then up to `retries` more after transient failures, each
    /// after a backoff (or the upstream's Retry-After, when it asks for no more than the cap).
    async fn call_with_retries(&self, model: &ModelEntry, attempts: &mut Vec<FailedAttempt>) -> Result<UpstreamResponse, Error> {
        let cut = &self.state.cut_in_flight;
        let http = self.state.http();
        let mut retry = 0;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                result = model.provider.chat(&http, self.request, &model.upstream_model, self.headers, self.timeouts) => result,
                // The shutdown grace is over: answer now (503) rather than be dropped unlogged.
                () = cut.cancelled() => return Err(Error::ShuttingDown),
            };
            let error = match result {
                Ok(upstream) => return Ok(upstream),
                Err(error) => error,
            };
            attempts.push(FailedAttempt {
                model: model.name.clone(),
                skipped: None,
                error_class: Some(error.class().to_owned()),
                latency_ms: Some(started.elapsed().as_secs_f64() * 1e3),
                retry,
            });
            let wait = match Failure::of(&error) {
                Some(failure) if retry < model.retry.retries => retry_wait(model, retry + 1, failure),
                _ => None,
            };
            let Some(wait) = wait else { return Err(error) };
            tracing::debug!(model = %model.name, error = %error, wait_ms = wait.as_millis(), "transient upstream failure; retrying");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cut.cancelled() => return Err(Error::ShuttingDown),
            }
            retry += 1;
        }
    }
}

/// How long to wait before retry number `retry`; `None`: do not retry this model (the
/// upstream asked for a longer pause than the model's cap allows).
fn retry_wait(model: &ModelEntry, retry: u32, failure: Failure) -> Option<Duration> {
    match failure {
        Failure::RateLimited { retry_after } => (retry_after <= model.retry.max_backoff).then_some(retry_after),
        Failure::Unhealthy => Some(model.retry.backoff(retry, rand::random::<f64>())),
    }
}

fn skipped(model: &ModelEntry, why: &str) -> FailedAttempt {
    FailedAttempt { model: model.name.clone(), skipped: Some(why.into()), error_class: None, latency_ms: None, retry: 0 }
}
