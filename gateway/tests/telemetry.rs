//! OpenTelemetry traces end to end, against an in-process OTLP/HTTP collector on loopback: a
//! request that arrives with a W3C `traceparent` is exported as a `chat` span under the
//! client's span, with its steps (`parse`, `limits`, `select`, `upstream`, …) under it; the
//! upstream request carries the trace on, with the `upstream` span as its parent; the log
//! writer's batch shows up as `log write`.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use gateway::config::LogFormat;
use gateway::mock::{self, MockOptions};
use gateway::telemetry::{self, OtlpConfig};
use gateway::{Application, Config};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A collector that keeps every exported span (OTLP/JSON `ExportTraceServiceRequest`).
async fn collector(spans: Arc<Mutex<Vec<Value>>>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |axum::Json(body): axum::Json<Value>| {
            let spans = spans.clone();
            async move {
                for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                    assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "switchyard-test");
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        spans.lock().unwrap().extend(scope["spans"].as_array().cloned().unwrap_or_default());
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_request_is_traced_under_the_clients_span_and_the_trace_goes_upstream() {
    let exported = Arc::new(Mutex::new(Vec::new()));
    let collector = collector(exported.clone()).await;
    let telemetry = telemetry::init(
        LogFormat::Text,
        Some(OtlpConfig { endpoint: format!("http://{collector}"), service_name: "switchyard-test".into() }),
    )
    .expect("telemetry");

    let traceparents = Arc::new(Mutex::new(Vec::new()));
    let mock_addr = mock::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), MockOptions { traceparents: traceparents.clone(), ..MockOptions::default() })
        .await
        .expect("mock");
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"sqlite::memory:\"\nbatch_interval_ms = 10\n\n[providers.up]\nkind = \"openai\"\nbase_url = \"http://{mock_addr}/v1\"\n\n[models.m]\nprovider = \"up\"\n"
    ))
    .expect("config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("gateway");
    let addr = app.addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "trace me"}]}))
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(());
    served.await.expect("server task").expect("server ran");
    telemetry.shutdown().await;

    let spans = exported.lock().unwrap().clone();
    let by_name: HashMap<&str, &Value> = spans.iter().filter_map(|s| Some((s["name"].as_str()?, s))).collect();
    let chat = by_name.get("chat").unwrap_or_else(|| panic!("no chat span in {spans:#?}"));
    assert_eq!(chat["traceId"], TRACE_ID, "the client's trace continues");
    assert_eq!(chat["parentSpanId"], CLIENT_SPAN, "under the client's span");
    for step in ["parse", "limits", "cache.exact", "embed", "select", "upstream"] {
        let span = by_name.get(step).unwrap_or_else(|| panic!("no `{step}` span in {:?}", by_name.keys()));
        assert_eq!(span["traceId"], TRACE_ID, "{step}");
        assert_eq!(span["parentSpanId"], chat["spanId"], "{step} is a step of the request");
        assert!(span["startTimeUnixNano"].as_str().unwrap() <= span["endTimeUnixNano"].as_str().unwrap());
    }
    assert!(by_name.contains_key("log write"), "the writer's batch is traced: {:?}", by_name.keys());

    // The upstream saw the trace, with the `upstream` span as its parent.
    let seen = traceparents.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let upstream = by_name["upstream"]["spanId"].as_str().unwrap();
    assert_eq!(seen[0], format!("00-{TRACE_ID}-{upstream}-01"));
}
