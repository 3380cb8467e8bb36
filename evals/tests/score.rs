//! `eval score` end to end: the real embedder (`.cache/models/all-MiniLM-L6-v2`, fetched by
//! scripts/fetch-model.sh) and the shipped checkpoint.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use evals::{run_score, Error, ModelOptions, ScoreOptions};
use serde_json::Value;

fn checkpoint() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/selector/default")
}

fn options(dir: &tempfile::TempDir, input: &str, candidates: Option<Vec<String>>) -> ScoreOptions {
    let path = dir.path().join("prompts.jsonl");
    std::fs::write(&path, input).expect("write input");
    ScoreOptions {
        model: ModelOptions {
            checkpoint: checkpoint(),
            embedder_dir: None,
            prices: None,
        },
        input: path,
        output: dir.path().join("scores.jsonl"),
        candidates,
    }
}

#[test]
fn scores_cover_every_id_and_candidate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = concat!(
        "{\"id\": \"a\", \"prompt\": \"What is the capital of France?\"}\n",
        "{\"id\": 2, \"prompt\": \"Write a Python function that returns the n-th Fibonacci number, with tests.\"}\n",
        "{\"id\": \"c\", \"prompt\": \"Prove that there are infinitely many primes.\", \"extra\": true}\n",
    );
    let pair = vec!["gpt-4-1106-preview".to_owned(), "mixtral-8x7b-instruct-v0.1".to_owned()];
    let opts = options(&dir, input, Some(pair.clone()));
    assert_eq!(run_score(&opts).expect("scores"), 3);
    let text = std::fs::read_to_string(&opts.output).expect("output");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let ids: Vec<&Value> = lines.iter().map(|l| &l["id"]).collect();
    assert_eq!(ids, [&Value::from("a"), &Value::from(2), &Value::from("c")]);
    for line in &lines {
        for model in &pair {
            let q = line["quality"][model].as_f64().expect("quality");
            assert!((0.0..=1.0).contains(&q), "{q}");
            assert!(line["cost"][model].as_f64().expect("cost") > 0.0);
            assert!(line["latency_ms"][model].as_f64().expect("latency") > 0.0);
        }
        assert_eq!(line["quality"].as_object().map(|o| o.len()), Some(2));
        // gpt-4-1106 at 10/30 USD per Mtok against Mixtral at 0.6: dearer on every prompt.
        assert!(line["cost"][&pair[0]].as_f64() > line["cost"][&pair[1]].as_f64());
    }
    // Different prompts get different predictions (the embedding reaches the selector).
    assert_ne!(lines[0]["quality"], lines[1]["quality"]);
}

#[test]
fn default_candidates_are_the_priced_checkpoint_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir, "{\"id\": 1, \"prompt\": \"hello\"}\n", None);
    run_score(&opts).expect("scores");
    let line: Value = serde_json::from_str(std::fs::read_to_string(&opts.output).expect("output").trim()).expect("JSON");
    let models = line["quality"].as_object().expect("object");
    assert!(models.len() >= 10, "{}", models.len());
    assert!(models.contains_key("claude-2") && models.contains_key("gpt-3.5-turbo-1106"));
}

#[test]
fn a_bad_line_is_an_error_naming_its_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = "{\"id\": \"a\", \"prompt\": \"hi\"}\n";
    for (bad, reason) in [
        ("{\"prompt\": \"no id\"}\n", "no `id`"),
        ("{\"id\": \"b\"}\n", "no `prompt`"),
        ("not json at all\n", "not JSON"),
        ("{\"id\": \"b\", \"prompt\": 7}\n", "`prompt` must be a string"),
        ("\n", "empty line"),
    ] {
        let opts = options(&dir, &format!("{good}{good}{bad}"), None);
        match run_score(&opts) {
            Err(Error::Line { line, reason: got, .. }) => {
                assert_eq!(line, 3, "{bad:?}");
                assert!(got.contains(reason), "{got}");
            }
            other => panic!("{bad:?}: expected a line error, got {other:?}"),
        }
    }
    let opts = options(&dir, good, Some(vec!["no-such-model".into()]));
    let err = run_score(&opts).expect_err("unknown candidate");
    assert!(err.to_string().contains("no-such-model"), "{err}");
}
