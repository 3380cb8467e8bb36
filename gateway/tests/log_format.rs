//! `[server] log_format = "json"` through the real binary: every line the gateway writes is one
//! JSON object, and a request's warning carries the request id the client got back.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const CONFIG: &str = r#"
[server]
log_format = "json"

[database]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"

[models.primary]
provider = "mock"
fallbacks = ["backup"]

[models.backup]
provider = "mock"
"#;

/// Kills the gateway when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_logs_are_one_object_a_line_and_name_the_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .env_remove("SWITCHYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("switchyard starts");
    let stderr = child.stderr.take().expect("stderr");
    let child = Child(child);
    let (lines, received) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let next_line = |until: Instant| -> Option<Value> {
        let line = received.recv_timeout(until.saturating_duration_since(Instant::now())).ok()?;
        let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object: {line:?} ({e})"));
        assert!(parsed["level"].is_string() && parsed["timestamp"].is_string() && parsed["message"].is_string(), "{parsed}");
        Some(parsed)
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = next_line(deadline).expect("the gateway logs that it listens");
        if line["message"] == "switchyard listening" {
            break line["addr"].as_str().expect("addr field").to_owned();
        }
        seen.push(line);
    };

    // The first model fails (mock fault), the fallback answers: a warning for this request.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let request_id = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-mock-fault", "primary=500")
            .header("x-request-id", "client-7f3a")
            .json(&serde_json::json!({"model": "primary", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("gateway reachable");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-switchyard-model"], "backup");
        response.headers()["x-switchyard-request-id"].to_str().expect("id").to_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let line = next_line(deadline).unwrap_or_else(|| panic!("no fallback warning; lines before: {seen:?}"));
        if line["level"] == "WARN" {
            break line;
        }
        seen.push(line);
    };
    assert_eq!(warning["request_id"], request_id.as_str(), "{warning}");
    assert_eq!(warning["model"], "primary", "{warning}");
    assert_eq!(warning["client_request_id"], "client-7f3a", "the client's own id, for its logs: {warning}");
    drop(child);
}
