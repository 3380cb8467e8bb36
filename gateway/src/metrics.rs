//! Prometheus metrics, served at `GET /metrics`.
//!
//! Per-request series are updated when a request's outcome is recorded (one place, so every
//! request is counted once, whatever path it took). Gauges that describe a component's state
//! (embedding queue depth, breaker states, log writer backlog) are read at scrape time.

use std::cell::RefCell;
use std::sync::LazyLock;

use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::outcome::RequestOutcome;

pub struct Metrics {
    registry: Registry,
    request_duration: HistogramVec,
    first_token: HistogramVec,
    tokens: IntCounterVec,
    cost_usd: prometheus::CounterVec,
    cache_results: IntCounterVec,
    decisions: IntCounterVec,
    decision_seconds: HistogramVec,
    pub embed_queue_depth: IntGauge,
    pub embed_cache_hits: IntGauge,
    /// Embedding requests refused since start, by reason (`queue_full`, `deadline`).
    pub embed_rejected: prometheus::IntGaugeVec,
    /// Forward passes run and texts embedded by them since start.
    pub embed_batches: IntGauge,
    pub embed_texts: IntGauge,
    /// Response-cache entries held in this process, by tier.
    pub cache_entries: prometheus::IntGaugeVec,
    pub breaker_state: GaugeVec,
    pub log_rows: GaugeVec,
    pub log_queued: IntGauge,
    /// Open client connections per serving thread (`runtime = "per_core"` only).
    pub serving_connections: prometheus::IntGaugeVec,
    pub db_pool_connections: GaugeVec,
    pub selector_loaded: GaugeVec,
    pub up: Gauge,
    /// Requests refused by a per-key or per-tenant limit, by kind and scope.
    pub limit_rejections: IntCounterVec,
    /// Limiter backend (Redis) calls that failed or timed out.
    pub limit_backend_errors: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const DECISION_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("switchyard".into()), None)?;
    let labels = &["route", "model", "provider", "status"];
    let request_duration = HistogramVec::new(
        HistogramOpts::new("request_duration_seconds", "Time from request to last byte").buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    let first_token = HistogramVec::new(
        HistogramOpts::new("time_to_first_token_seconds", "Time from request to the first answer byte")
            .buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    let tokens = IntCounterVec::new(Opts::new("tokens_total", "Tokens by direction"), &["route", "model", "direction"])?;
    let cost_usd = prometheus::CounterVec::new(Opts::new("cost_usd_total", "Upstream cost in USD"), &["route", "model"])?;
    let cache_results = IntCounterVec::new(Opts::new("cache_results_total", "Cache lookups by result"), &["result"])?;
    let decisions = IntCounterVec::new(
        Opts::new("routing_decisions_total", "Routing decisions by kind (selected, explored, shed, default)"),
        &["route", "kind"],
    )?;
    let decision_seconds = HistogramVec::new(
        HistogramOpts::new("routing_decision_seconds", "Embedding + scoring time per routed request")
            .buckets(DECISION_BUCKETS.to_vec()),
        &["route"],
    )?;
    let embed_queue_depth = IntGauge::new("embed_queue_depth", "Requests waiting for the embedding thread")?;
    let embed_cache_hits = IntGauge::new("embed_cache_hits", "Embedding LRU hits since start")?;
    let embed_rejected = prometheus::IntGaugeVec::new(
        Opts::new("embed_rejected", "Embedding requests refused since start (the decision was shed)"),
        &["reason"],
    )?;
    let embed_batches = IntGauge::new("embed_batches", "Embedding forward passes since start")?;
    let embed_texts = IntGauge::new("embed_texts", "Texts embedded by the model since start")?;
    let cache_entries = prometheus::IntGaugeVec::new(
        Opts::new("cache_entries", "Response-cache entries held in this process"),
        &["tier"],
    )?;
    let breaker_state = GaugeVec::new(
        Opts::new("breaker_open", "1 when a model's circuit breaker is open or half-open"),
        &["model", "state"],
    )?;
    let log_rows = GaugeVec::new(Opts::new("log_rows", "Outcome log rows by what became of them"), &["outcome"])?;
    let log_queued = IntGauge::new("log_writer_queued_rows", "Rows waiting in the log writer's channel (lag)")?;
    let serving_connections = prometheus::IntGaugeVec::new(
        Opts::new("serving_thread_connections", "Open client connections per serving thread (runtime = per_core)"),
        &["thread"],
    )?;
    let db_pool_connections =
        GaugeVec::new(Opts::new("db_pool_connections", "Database pool connections"), &["state"])?;
    let selector_loaded =
        GaugeVec::new(Opts::new("selector_checkpoint_info", "Loaded selector checkpoints"), &["role", "version"])?;
    let up = Gauge::new("up", "1 while the gateway runs")?;
    up.set(1.0);
    let limit_rejections = IntCounterVec::new(
        Opts::new("limit_rejections_total", "Requests refused by a limit (kind: rpm, tpm, budget; scope: key, tenant)"),
        &["kind", "scope"],
    )?;
    let limit_backend_errors = IntCounterVec::new(
        Opts::new("limit_backend_errors_total", "Rate limiter backend calls that failed or timed out"),
        &["op"],
    )?;
    for collector in [
        Box::new(request_duration.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(first_token.clone()),
        Box::new(tokens.clone()),
        Box::new(cost_usd.clone()),
        Box::new(cache_results.clone()),
        Box::new(decisions.clone()),
        Box::new(decision_seconds.clone()),
        Box::new(embed_queue_depth.clone()),
        Box::new(embed_cache_hits.clone()),
        Box::new(embed_rejected.clone()),
        Box::new(embed_batches.clone()),
        Box::new(embed_texts.clone()),
        Box::new(cache_entries.clone()),
        Box::new(breaker_state.clone()),
        Box::new(log_rows.clone()),
        Box::new(log_queued.clone()),
        Box::new(serving_connections.clone()),
        Box::new(db_pool_connections.clone()),
        Box::new(selector_loaded.clone()),
        Box::new(up.clone()),
        Box::new(limit_rejections.clone()),
        Box::new(limit_backend_errors.clone()),
    ] {
        registry.register(collector)?;
    }
    Ok(Metrics {
        registry,
        request_duration,
        first_token,
        tokens,
        cost_usd,
        cache_results,
        decisions,
        decision_seconds,
        embed_queue_depth,
        embed_cache_hits,
        embed_rejected,
        embed_batches,
        embed_texts,
        cache_entries,
        breaker_state,
        log_rows,
        log_queued,
        serving_connections,
        db_pool_connections,
        selector_loaded,
        up,
        limit_rejections,
        limit_backend_errors,
    })
}

/// The process-wide metrics. Registration only fails on duplicate names, which the unit
/// test below rules out.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    build().expect("metric definitions are valid")
});

/// How many label sets each thread keeps at hand (a gateway has a handful of models and routes
/// and a few statuses; past this, lookups go to the registry each time).
const MAX_CACHED_SERIES: usize = 64;

thread_local! {
    /// The series a thread has updated, by label set: `with_label_values` hashes the labels
    /// and takes a lock, five times for every request; a short list compared by status and
    /// names finds them for less. Series are never removed from the registry, so a kept one
    /// stays the registered one.
    static SERIES: RefCell<Vec<(SeriesKey, RequestSeries)>> = const { RefCell::new(Vec::new()) };
}

struct SeriesKey {
    status: u16,
    route: String,
    model: String,
    provider: String,
}

impl SeriesKey {
    fn is(&self, status: u16, route: &str, model: &str, provider: &str) -> bool {
        self.status == status && self.model == model && self.route == route && self.provider == provider
    }
}

/// What one finished request updates, for one label set.
struct RequestSeries {
    duration: Histogram,
    first_token: Histogram,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    cost_usd: Counter,
}

impl RequestSeries {
    fn observe(&self, outcome: &RequestOutcome) {
        self.duration.observe(outcome.latency_ms / 1e3);
        if let Some(first) = outcome.first_token_ms {
            self.first_token.observe(first / 1e3);
        }
        if let Some(usage) = outcome.usage {
            self.prompt_tokens.inc_by(usage.prompt_tokens);
            self.completion_tokens.inc_by(usage.completion_tokens);
        }
        if let Some(cost) = outcome.cost_usd {
            self.cost_usd.inc_by(cost);
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn observe(&self, outcome: &RequestOutcome) {
        let route = outcome.route.as_deref().unwrap_or("");
        SERIES.with(|cached| {
            let mut cached = cached.borrow_mut();
            let found = cached.iter().position(|(key, _)| key.is(outcome.status, route, &outcome.model, &outcome.provider));
            let series = match found {
                Some(at) => &cached[at].1,
                None => {
                    let series = self.series(route, &outcome.model, &outcome.provider, outcome.status);
                    if cached.len() >= MAX_CACHED_SERIES {
                        // Beyond the bound (many models, routes and statuses), look up each time.
                        series.observe(outcome);
                        return;
                    }
                    let key = SeriesKey { status: outcome.status, route: route.into(), model: outcome.model.clone(), provider: outcome.provider.clone() };
                    cached.push((key, series));
                    &cached[cached.len() - 1].1
                }
            };
            series.observe(outcome);
        });
        if let Some(result) = outcome.cache_result {
            self.cache_results.with_label_values(&[result]).inc();
        }
        if let Some(details) = &outcome.candidates {
            if let Some(kind) = details.decision.as_deref() {
                self.decisions.with_label_values(&[route, kind]).inc();
            }
            if let Some(ms) = details.decision_ms {
                self.decision_seconds.with_label_values(&[route]).observe(ms / 1e3);
            }
        }
    }

    /// The series of one route, model, provider and status.
    fn series(&self, route: &str, model: &str, provider: &str, status: u16) -> RequestSeries {
        let status = status.to_string();
        let labels = [route, model, provider, status.as_str()];
        RequestSeries {
            duration: self.request_duration.with_label_values(&labels),
            first_token: self.first_token.with_label_values(&labels),
            prompt_tokens: self.tokens.with_label_values(&[route, model, "prompt"]),
            completion_tokens: self.tokens.with_label_values(&[route, model, "completion"]),
            cost_usd: self.cost_usd.with_label_values(&[route, model]),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let text = METRICS.render();
        assert!(text.contains("switchyard_up 1"), "{text}");
    }
}
