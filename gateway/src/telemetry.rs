//! Logs and traces. Logs go to stderr as text or one JSON object a line, filtered by
//! `RUST_LOG`. Traces are OpenTelemetry spans — the request (`chat`) and its steps (`parse`,
//! `limits`, `cache.exact`, `embed`, `cache.semantic`, `select`, `upstream`) and the log
//! writer's batches (`log write`) — exported over OTLP/HTTP with the JSON encoding to
//! `[telemetry] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`), whatever `RUST_LOG` says.
//! A client's W3C `traceparent` becomes the request span's parent, and the upstream call
//! carries the trace on to the provider.
//!
//! The exporter hands each batch to a task on the gateway's runtime that posts it with the
//! gateway's HTTP stack; a collector that is down costs dropped batches (counted in a
//! warning), never a slower request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanId, SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;
use crate::error::Error;

/// Whether spans are exported: when not, nothing is extracted or injected per request.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Target of the spans each request opens (`chat` and its steps). They are there for traces;
/// the log lines leave them out unless `RUST_LOG` names this target (`RUST_LOG=info,
/// switchyard::request=info`), because keeping eight spans a request cost a passthrough
/// request a fifth of its CPU, for context on lines the request path seldom writes (its
/// warnings name the request id themselves).
pub const REQUEST_SPANS: &str = "switchyard::request";

/// Batches waiting to be posted; more are dropped.
const QUEUED_BATCHES: usize = 64;
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where traces go.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`); spans are posted to `/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    poster: Option<tokio::task::JoinHandle<()>>,
}

impl Telemetry {
    /// Exports the spans still buffered and waits (up to 5 s) until they are posted.
    pub async fn shutdown(self) {
        TRACING.store(false, Ordering::Relaxed);
        if let Some(provider) = self.provider {
            // Shutting the provider down flushes its batch thread and drops the exporter,
            // which closes the channel: the poster ends once it has posted what is left.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
        if let Some(poster) = self.poster {
            let _ = tokio::time::timeout(Duration::from_secs(5), poster).await;
        }
    }
}

/// Installs the global subscriber: logs in `format`, and spans to `otlp` when given. Call
/// inside the Tokio runtime (the poster runs on it).
pub fn init(format: LogFormat, otlp: Option<OtlpConfig>) -> Result<Telemetry, Error> {
    let (provider, poster, traces) = match otlp {
        None => (None, None, None),
        Some(otlp) => {
            let (batches, poster) = spawn_poster(&otlp)?;
            let provider = SdkTracerProvider::builder().with_batch_exporter(ChannelExporter { batches }).build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("switchyard"))
                .with_filter(EnvFilter::new("info"))
                .boxed();
            TRACING.store(true, Ordering::Relaxed);
            (Some(provider), Some(poster), Some(layer))
        }
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    tracing_subscriber::registry()
        .with(layers(format, rust_log.as_deref(), traces))
        .try_init()
        .map_err(|e| Error::Config(format!("logging is already set up: {e}")))?;
    Ok(Telemetry { provider, poster })
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The subscriber's layers: log lines in `format` filtered by `rust_log`, and `traces`. A list
/// rather than optional layers: an absent `Option` layer counts as interested in every span,
/// so the registry would keep each request's spans with nothing reading them.
fn layers(format: LogFormat, rust_log: Option<&str>, traces: Option<BoxedLayer>) -> Vec<BoxedLayer> {
    let filter = log_filter(rust_log);
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    std::iter::once(lines).chain(traces).collect()
}

/// The log lines' filter: `RUST_LOG` (`info` when unset or unreadable), without the request
/// spans unless it names them.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let filter = rust_log.and_then(|directives| EnvFilter::try_new(directives).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    if rust_log.is_some_and(|directives| directives.contains(REQUEST_SPANS)) {
        return filter;
    }
    match format!("{REQUEST_SPANS}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Makes the client's `traceparent` (if any) the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !TRACING.load(Ordering::Relaxed) || !headers.contains_key("traceparent") {
        return;
    }
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(context);
}

/// The `traceparent` (and `tracestate`) of the current span, for an upstream request;
/// empty when traces are off.
pub fn trace_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    if TRACING.load(Ordering::Relaxed) {
        let context = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
    }
    headers
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// Hands batches to the poster without blocking the SDK's batch thread.
#[derive(Debug)]
struct ChannelExporter {
    batches: mpsc::Sender<Vec<SpanData>>,
}

impl SpanExporter for ChannelExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let sent = self.batches.try_send(batch).map_err(|e| OTelSdkError::InternalFailure(format!("trace batch dropped: {e}")));
        std::future::ready(sent)
    }
}

fn spawn_poster(otlp: &OtlpConfig) -> Result<(mpsc::Sender<Vec<SpanData>>, tokio::task::JoinHandle<()>), Error> {
    let url = reqwest::Url::parse(&format!("{}/v1/traces", otlp.endpoint.trim_end_matches('/')))
        .map_err(|e| Error::Config(format!("[telemetry] otlp_endpoint `{}`: {e}", otlp.endpoint)))?;
    let client = reqwest::Client::builder().timeout(POST_TIMEOUT).build().map_err(|e| Error::Config(e.to_string()))?;
    let service = otlp.service_name.clone();
    let (batches, mut queued) = mpsc::channel::<Vec<SpanData>>(QUEUED_BATCHES);
    let poster = tokio::spawn(async move {
        while let Some(batch) = queued.recv().await {
            let body = otlp_json(&batch, &service);
            match client.post(url.clone()).json(&body).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(status = %response.status(), spans = batch.len(), "trace collector refused a batch"),
                Err(error) => tracing::warn!(%error, spans = batch.len(), "trace collector unreachable; batch dropped"),
            }
        }
    });
    Ok((batches, poster))
}

/// A batch in the OTLP/JSON encoding (`ExportTraceServiceRequest`; ids in hex).
pub fn otlp_json(batch: &[SpanData], service_name: &str) -> Value {
    let spans: Vec<Value> = batch.iter().map(span_json).collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]},
        "scopeSpans": [{"scope": {"name": "switchyard"}, "spans": spans}],
    }]})
}

fn span_json(span: &SpanData) -> Value {
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string();
    // `Display` is the zero-padded hex OTLP/JSON wants (`LowerHex` drops leading zeros).
    let parent = if span.parent_span_id == SpanId::INVALID { String::new() } else { span.parent_span_id.to_string() };
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    let status = match &span.status {
        Status::Unset => json!({"code": 0}),
        Status::Ok => json!({"code": 1}),
        Status::Error { description } => json!({"code": 2, "message": description.as_ref()}),
    };
    let attributes: Vec<Value> = span.attributes.iter().map(|kv| json!({"key": kv.key.as_str(), "value": attribute(&kv.value)})).collect();
    json!({
        "traceId": span.span_context.trace_id().to_string(),
        "spanId": span.span_context.span_id().to_string(),
        "parentSpanId": parent,
        "name": span.name.as_ref(),
        "kind": kind,
        "startTimeUnixNano": nanos(span.start_time),
        "endTimeUnixNano": nanos(span.end_time),
        "attributes": attributes,
        "status": status,
    })
}

fn attribute(value: &opentelemetry::Value) -> Value {
    match value {
        opentelemetry::Value::Bool(b) => json!({"boolValue": b}),
        opentelemetry::Value::I64(i) => json!({"intValue": i.to_string()}),
        opentelemetry::Value::F64(f) => json!({"doubleValue": f}),
        other => json!({"stringValue": other.as_str().as_ref()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a request span, and an INFO line of another target, are kept by the
    /// subscriber `init` installs (text lines, no traces) under `RUST_LOG=rust_log`.
    fn logged(rust_log: Option<&str>) -> (bool, bool) {
        let text = kept(LogFormat::Text, rust_log, None);
        assert_eq!(kept(LogFormat::Json, rust_log, None), text, "JSON lines as text lines");
        text
    }

    fn kept(format: LogFormat, rust_log: Option<&str>, traces: Option<BoxedLayer>) -> (bool, bool) {
        let subscriber = tracing_subscriber::registry().with(layers(format, rust_log, traces));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: REQUEST_SPANS, "chat");
            (!span.is_disabled(), tracing::enabled!(target: "gateway::app", tracing::Level::INFO))
        })
    }

    #[test]
    fn log_lines_leave_the_request_spans_out_unless_rust_log_names_them() {
        assert_eq!(logged(None), (false, true), "default: INFO lines, no request spans");
        assert_eq!(logged(Some("debug")), (false, true));
        assert_eq!(logged(Some("not a filter [")), (false, true), "an unreadable RUST_LOG falls back to info");
        assert_eq!(logged(Some("warn")), (false, false));
        assert_eq!(logged(Some("info,switchyard::request=info")), (true, true));
        assert_eq!(logged(Some("warn,switchyard::request=info")), (true, false));
    }

    #[test]
    fn traces_keep_the_request_spans_whatever_rust_log_says() {
        let traces = || Some(tracing_subscriber::filter::LevelFilter::INFO.boxed());
        assert!(kept(LogFormat::Text, None, traces()).0);
        assert!(kept(LogFormat::Json, Some("warn"), traces()).0);
    }
}
