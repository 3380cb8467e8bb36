//! Shared test harness: a mock upstream and a gateway on loopback port 0.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

#![allow(dead_code)]

use std::net::SocketAddr;

use gateway::mock::{self, MockOptions};
use gateway::{Application, Config};
use tokio::sync::oneshot;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub mock_addr: SocketAddr,
    pub client: reqwest::Client,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    served: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), gateway::Error>>>>,
}

impl TestGateway {
    /// Graceful shutdown: drains requests and flushes the outcome log.
    pub async fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("lock").take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.lock().await.take() {
            served.await.expect("server task").expect("server ran");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("gateway reachable")
    }
}

/// Starts a mock upstream, then a gateway whose config is `config_for(mock_addr)`.
pub async fn start(config_for: impl FnOnce(SocketAddr) -> String) -> TestGateway {
    let mock_addr = mock::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), MockOptions::default())
        .await
        .expect("mock starts");
    let config = Config::from_toml(&config_for(mock_addr)).expect("valid test config");
    let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("gateway builds");
    let addr = app.addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestGateway {
        addr,
        mock_addr,
        client: reqwest::Client::new(),
        stop: std::sync::Mutex::new(Some(stop)),
        served: tokio::sync::Mutex::new(Some(served)),
    }
}

/// OpenAI-compatible, Anthropic and mock providers all pointing at the test mock.
pub fn standard_config(mock: SocketAddr) -> String {
    format!(
        r#"
[server]
max_body_bytes = 65536
first_byte_timeout_ms = 500

[database]
url = "sqlite::memory:"

[providers.openai]
kind = "openai"
base_url = "http://{mock}/v1"

[providers.anthropic]
kind = "anthropic"
base_url = "http://{mock}/v1"

[providers.mock]
kind = "mock"
base_url = "http://{mock}/v1"

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[models."gpt-4o-mini"]
provider = "openai"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6

[models.claude]
provider = "anthropic"
upstream_model = "claude-3-5-haiku-latest"

[models.faulty]
provider = "mock"

[models.unreachable]
provider = "down"

[routes.auto]
candidates = ["gpt-4o-mini", "claude"]
default = "gpt-4o-mini"
"#
    )
}

/// Reads an SSE body into its `data:` payloads.
pub async fn sse_data(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.expect("stream body");
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
