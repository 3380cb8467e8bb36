//! `switchyard judge` against a running gateway's log: the mock upstream serves the answers
//! and plays the judge (its score is the answer's word count modulo 11, which the test
//! recomputes from the stored answer).

#![allow(clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use gateway::mock::{self, MockOptions};
use gateway::store::LogStore;
use gateway::{Application, Config};
use serde_json::json;
use uuid::Uuid;

fn config(mock: SocketAddr, dir: &std::path::Path, store_prompts: bool) -> Config {
    Config::from_toml(&format!(
        r#"
[database]
url = "sqlite://{db}"
spill_path = "{spill}"
batch_interval_ms = 10
store_prompts = {store_prompts}

[providers.up]
kind = "openai"
base_url = "http://{mock}/v1"

[models.m]
provider = "up"

[models.grader]
provider = "up"

[judge]
model = "grader"
"#,
        db = dir.join("log.db").display(),
        spill = dir.join("spill.jsonl").display(),
    ))
    .expect("config")
}

async fn serve_some(config: &Config, prompts: &[&str]) -> (Vec<Uuid>, gateway::store::Store) {
    let app = Application::build(config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("gateway");
    let (addr, state) = (app.addr(), app.state());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&json!({"model": "m", "stream": i == prompts.len() - 1, "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-switchyard-request-id"].to_str().expect("ascii").parse().expect("uuid");
        response.text().await.expect("body");
        ids.push(id);
    }
    state.log.flush().await.expect("flush");
    let store = state.store.clone();
    let _ = stop.send(());
    served.await.expect("join").expect("clean stop");
    (ids, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_rates_each_kept_answer_once_with_the_score_it_read() {
    let mock = mock::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), MockOptions::default()).await.expect("mock");
    let dir = tempfile::tempdir().expect("tmp");
    let config = config(mock, dir.path(), true);
    let prompts = ["What is the capital of France?", "Name three prime numbers", "Why is the sky blue", "streamed: not kept"];
    let (ids, store) = serve_some(&config, &prompts).await;

    let report = gateway::judge::run(&config, None, 100).await.expect("judge runs");
    assert_eq!((report.considered, report.rated, report.unparsed, report.failed), (3, 3, 0, 0), "{report:?}");
    for id in &ids[..3] {
        let row = store.fetch_row(*id).await.expect("read").expect("row");
        let answer = row.answer_text.expect("non-stream answers are kept with store_prompts");
        let expected = (answer.split_whitespace().count() % 11) as f64 / 10.0;
        let feedback = store.feedback_for(*id).await.expect("feedback");
        assert_eq!(feedback.len(), 1);
        assert_eq!(feedback[0].source, "judge");
        assert!((feedback[0].score - expected).abs() < 1e-12, "{} vs {expected} for {answer:?}", feedback[0].score);
    }
    let streamed = store.fetch_row(ids[3]).await.expect("read").expect("row");
    assert_eq!(streamed.answer_text, None);
    assert!(store.feedback_for(ids[3]).await.expect("feedback").is_empty());

    // Only what is new is rated: a second run finds nothing.
    let again = gateway::judge::run(&config, None, 100).await.expect("judge runs again");
    assert_eq!((again.considered, again.rated), (0, 0));
    // An unknown judge model is a config error, not a silent no-op.
    assert!(gateway::judge::run(&config, Some("no-such-model"), 100).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_store_prompts_nothing_is_kept_and_nothing_is_judged() {
    let mock = mock::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), MockOptions::default()).await.expect("mock");
    let dir = tempfile::tempdir().expect("tmp");
    let config = config(mock, dir.path(), false);
    let (ids, store) = serve_some(&config, &["What is the capital of France?", "last one streams"]).await;
    assert_eq!(store.fetch_row(ids[0]).await.expect("read").expect("row").answer_text, None);
    let report = gateway::judge::run(&config, None, 100).await.expect("judge runs");
    assert_eq!(report.considered, 0);
}
