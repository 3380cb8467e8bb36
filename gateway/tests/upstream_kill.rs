//! One of two upstreams dies during a bounded load run on loopback: the client must not
//! notice. The primary's mock sits behind a TCP proxy that the test cuts (every open
//! connection dropped, new ones refused) after a third of the requests.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

mod store_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway::mock::{self, MockOptions};
use gateway::{Application, Config};
use serde_json::json;
use store_support::TcpProxy;

const CLIENTS: usize = 8;
const REQUESTS_PER_CLIENT: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_upstreams_under_load_fails_no_request() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let primary_mock = mock::spawn(loopback, MockOptions::default()).await.expect("mock");
    let secondary_mock = mock::spawn(loopback, MockOptions::default()).await.expect("mock");
    let proxy = TcpProxy::start(primary_mock).await;
    let config = Config::from_toml(&format!(
        r#"
[server]
first_byte_timeout_ms = 2000
breaker_failures = 3
breaker_open_ms = 60000

[database]
url = "sqlite::memory:"

[providers.a]
kind = "openai"
base_url = "http://{primary}/v1"

[providers.b]
kind = "openai"
base_url = "http://{secondary}/v1"

[models.primary]
provider = "a"

[models.secondary]
provider = "b"

[routes.pair]
candidates = ["primary", "secondary"]
default = "primary"
exploration = 0
"#,
        primary = proxy.addr,
        secondary = secondary_mock,
    ))
    .expect("config");
    let app = Application::build(&config, Some(loopback)).await.expect("gateway builds");
    let url = format!("http://{}/v1/chat/completions", app.addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let sent = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(REQUESTS_PER_CLIENT);
            for i in 0..REQUESTS_PER_CLIENT {
                sent.fetch_add(1, Ordering::Relaxed);
                let body = json!({"model": "pair", "messages": [{"role": "user", "content": format!("client {c} request {i}")}]});
                let response = client.post(&url).json(&body).send().await.expect("gateway reachable");
                let status = response.status().as_u16();
                let model = response.headers().get("x-switchyard-model").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let complete = response.json::<serde_json::Value>().await.is_ok_and(|b| b["choices"][0]["message"]["content"].is_string());
                outcomes.push((status, model, complete));
            }
            outcomes
        }));
    }
    // Cut the primary a third of the way through (bounded wait).
    let total = CLIENTS * REQUESTS_PER_CLIENT;
    for _ in 0..2_000 {
        if sent.load(Ordering::Relaxed) >= total / 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    proxy.cut().await;

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("client task"));
    }
    let failed: Vec<_> = outcomes.iter().filter(|(status, _, complete)| *status != 200 || !complete).collect();
    assert!(failed.is_empty(), "{} of {total} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let by = |name: &str| outcomes.iter().filter(|(_, model, _)| model == name).count();
    let (primary, secondary) = (by("primary"), by("secondary"));
    eprintln!("{total} requests: primary {primary}, secondary {secondary}");
    assert_eq!(primary + secondary, total);
    assert!(primary > 0, "the primary served before it was cut");
    assert!(secondary >= total / 2, "the secondary served the rest: {secondary}");
    let _ = stop.send(());
    served.await.expect("server task").expect("server ran");
}
