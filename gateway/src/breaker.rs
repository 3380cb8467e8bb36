//! Circuit breakers per model (provider × upstream model), so a failing upstream is skipped
//! quickly instead of costing every request a timeout.
//!
//! Closed → (N consecutive 5xx / timeouts / connection errors) → open for `open_for` →
//! half-open: one probe request is let through; success closes, failure re-opens. A 429 never
//! opens the breaker (the upstream is healthy, just busy): it puts the model in cooldown for
//! the Retry-After it sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
    cooldown_until: Option<Instant>,
}

/// What kind of failure an upstream call had, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 5xx, timeout, connection error: counts towards opening.
    Unhealthy,
    /// 429: cooldown only.
    RateLimited { retry_after: Duration },
}

impl Failure {
    /// Classifies an upstream error; `None` for errors that say nothing about the upstream's
    /// health (a 400 caused by the request itself).
    pub fn of(error: &Error) -> Option<Self> {
        match error {
            Error::Upstream { status, retry_after, .. } if status.as_u16() == 429 => {
                let secs = retry_after
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                Some(Self::RateLimited { retry_after: Duration::from_secs(secs.min(300)) })
            }
            Error::Upstream { status, .. } if status.is_server_error() => Some(Self::Unhealthy),
            Error::BadGateway(_) | Error::GatewayTimeout(_) => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

pub struct Breakers {
    failure_threshold: u32,
    open_for: Duration,
    models: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for,
            models: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, model: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Looked up by `&str` first: the key is copied only the first time a model is seen,
        // not twice on every request.
        if let Some(breaker) = models.get_mut(model) {
            return f(breaker);
        }
        f(models.entry(model.to_owned()).or_default())
    }

    /// Whether a request may go to `model` now. In half-open state only one probe passes;
    /// the caller must then report its result.
    pub fn try_acquire(&self, model: &str) -> bool {
        let now = Instant::now();
        self.with(model, |b| {
            if b.cooldown_until.is_some_and(|until| now < until) {
                return false;
            }
            match b.open_until {
                None => true,
                Some(until) if now < until => false,
                Some(_) if b.probe_in_flight => false,
                Some(_) => {
                    b.probe_in_flight = true;
                    true
                }
            }
        })
    }

    pub fn record_success(&self, model: &str) {
        self.with(model, |b| {
            b.consecutive_failures = 0;
            b.open_until = None;
            b.probe_in_flight = false;
        });
    }

    pub fn record_failure(&self, model: &str, failure: Failure) {
        let now = Instant::now();
        let (threshold, open_for) = (self.failure_threshold, self.open_for);
        self.with(model, |b| match failure {
            Failure::RateLimited { retry_after } => {
                b.cooldown_until = Some(now + retry_after);
                b.probe_in_flight = false;
            }
            Failure::Unhealthy => {
                b.consecutive_failures += 1;
                let probing = b.probe_in_flight;
                b.probe_in_flight = false;
                if probing || b.consecutive_failures >= threshold {
                    b.open_until = Some(now + open_for);
                    tracing::warn!(model, failures = b.consecutive_failures, "circuit breaker open");
                }
            }
        });
    }

    /// Releases a half-open probe whose result said nothing about health (e.g. a 400).
    pub fn release(&self, model: &str) {
        self.with(model, |b| b.probe_in_flight = false);
    }

    pub fn state(&self, model: &str) -> BreakerState {
        let now = Instant::now();
        self.with(model, |b| match b.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_half_opens_with_one_probe() {
        let breakers = Breakers::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert!(breakers.try_acquire("m"));
            breakers.record_failure("m", Failure::Unhealthy);
        }
        assert_eq!(breakers.state("m"), BreakerState::Closed);
        breakers.record_failure("m", Failure::Unhealthy);
        assert_eq!(breakers.state("m"), BreakerState::Open);
        assert!(!breakers.try_acquire("m"));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breakers.state("m"), BreakerState::HalfOpen);
        assert!(breakers.try_acquire("m"), "one probe");
        assert!(!breakers.try_acquire("m"), "only one probe");
        breakers.record_success("m");
        assert_eq!(breakers.state("m"), BreakerState::Closed);
        assert!(breakers.try_acquire("m"));
    }

    #[test]
    fn failed_probe_reopens() {
        let breakers = Breakers::new(1, Duration::from_millis(20));
        breakers.record_failure("m", Failure::Unhealthy);
        std::thread::sleep(Duration::from_millis(25));
        assert!(breakers.try_acquire("m"));
        breakers.record_failure("m", Failure::Unhealthy);
        assert_eq!(breakers.state("m"), BreakerState::Open);
    }

    #[test]
    fn rate_limit_cools_down_without_opening() {
        let breakers = Breakers::new(1, Duration::from_secs(60));
        breakers.record_failure("m", Failure::RateLimited { retry_after: Duration::from_millis(20) });
        assert_eq!(breakers.state("m"), BreakerState::Closed);
        assert!(!breakers.try_acquire("m"));
        std::thread::sleep(Duration::from_millis(25));
        assert!(breakers.try_acquire("m"));
    }
}
