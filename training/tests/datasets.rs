//! The importers on the real shared datasets (`../shared/data` beside the checkout): row
//! counts, splits, and a few values read by hand from the files.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use training::data::{self, DatasetKind, DatasetSpec, Split};

fn shared(folder: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(folder)
}

fn load(kind: DatasetKind, folder: &str) -> data::Dataset {
    data::load(&DatasetSpec {
        kind,
        path: shared(folder),
    })
    .unwrap_or_else(|e| panic!("loading {folder}: {e}"))
}

#[test]
fn routerbench_counts_values_and_preamble() {
    let d = load(DatasetKind::Routerbench, "routerbench-subset");
    assert_eq!(d.rows.len(), 3178);
    assert_eq!(d.count(Split::Train), 1039 + 299 + 887);
    assert_eq!(d.count(Split::Test), 445 + 128 + 380);
    assert_eq!(d.models.len(), 11);
    for id in ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1", "llama-2-70b-chat", "claude-instant-1", "yi-34b-chat"] {
        assert!(d.models.contains(id), "{id} missing from {:?}", d.models);
    }
    // mbpp_test.csv, first row (mbpp.dev.1).
    let row = d
        .rows
        .iter()
        .find(|r| r.prompt == "Write a python function to identify non-prime numbers.")
        .expect("mbpp.dev.1");
    assert_eq!(row.split, Split::Test);
    assert_eq!(row.task, "mbpp");
    assert_eq!(row.quality("gpt-4-1106-preview"), Some(0.0));
    assert_eq!(row.quality("mixtral-8x7b-instruct-v0.1"), Some(0.0));
    assert_eq!(row.quality("llama-2-70b-chat"), Some(1.0));
    let gpt4 = row.outcomes["gpt-4-1106-preview"];
    assert!((gpt4.cost_usd.unwrap_or(0.0) - 0.01091).abs() < 1e-9);
    assert_eq!(gpt4.output_tokens, Some((1410f32 / 4.0).ceil()));

    // The few-shot preamble is gone from every ARC and Winogrande prompt.
    for row in d.rows.iter().filter(|r| r.task != "mbpp") {
        assert!(row.prompt.len() < 1100, "{} chars: {}", row.prompt.len(), &row.prompt[..80]);
        assert!(!row.prompt.contains("Answer:\nA\n\n") && !row.prompt.contains("Answer:\nB\n\n"));
    }
    let arc = d.rows.iter().filter(|r| r.task == "arc-challenge" && r.split == Split::Test).count();
    assert_eq!(arc, 445);
    // Blank scores stay missing (ARC has a few).
    let missing = d.rows.iter().filter(|r| r.quality("gpt-4-1106-preview").is_none()).count();
    assert_eq!(missing, 14);
}

#[test]
fn arena_hard_scores_are_rescaled_and_split_by_hash() {
    let d = load(DatasetKind::ArenaHard, "arena-hard-v1");
    assert_eq!(d.rows.len(), 299);
    assert_eq!(d.models.len(), 15);
    let test = d.count(Split::Test);
    assert!((60..120).contains(&test), "{test} test prompts");
    let row = d
        .rows
        .iter()
        .find(|r| r.prompt.starts_with("What is the  equation of straight line passing through (2, 3)"))
        .expect("question 66c00ddd");
    assert_eq!(row.quality("gpt-4-1106-preview"), Some(1.0)); // judge 10
    assert_eq!(row.quality("llama-2-70b-chat"), Some(2.0 / 9.0)); // judge 3
    assert_eq!(row.quality("mixtral-8x7b-instruct-v0.1"), Some(1.0));
    assert_eq!(row.quality("mistral-7b-instruct-v0.1"), Some(6.0 / 9.0)); // judge 7
    assert_eq!(row.outcomes["llama-13b"].output_tokens, Some(3.0)); // 10 characters
    // 39 blank judge scores are missing, not zero.
    let missing: usize = d.rows.iter().map(|r| r.outcomes.values().filter(|o| o.quality.is_none()).count()).sum();
    assert_eq!(missing, 39);
    // The same prompt always lands on the same side.
    let again = load(DatasetKind::ArenaHard, "arena-hard-v1");
    assert!(d.rows.iter().zip(&again.rows).all(|(a, b)| a.split == b.split));
}

#[test]
fn llmrouter_counts_values_and_prices() {
    let d = load(DatasetKind::Llmrouter, "llmrouter-9models");
    assert_eq!(d.count(Split::Train), 5398);
    assert_eq!(d.count(Split::Test), 350);
    assert_eq!(d.models.len(), 9);
    let first_test = d.rows.iter().find(|r| r.split == Split::Test).expect("test rows");
    assert!(first_test.prompt.starts_with("Q: There are 3 houses in a row"));
    assert_eq!(first_test.quality("mistral-7b-instruct-v0.3"), Some(1.0));
    assert_eq!(first_test.quality("qwen2.5-7b-instruct"), Some(0.0));
    assert_eq!(d.prices.get("gemma-2-9b-it"), Some(&(0.10, 0.10)));
}

#[test]
fn routerdc_counts_tasks_and_held_out_hygiene() {
    let d = load(DatasetKind::Routerdc, "routerdc-7models");
    assert_eq!(d.rows.len(), 6208);
    assert_eq!(d.models.len(), 7);
    assert!(d.models.contains("mistral-7b-v0.1") && d.models.contains("metamath-mistral-7b"));
    let gsm8k = d.rows.iter().filter(|r| r.task == "gsm8k-train").count();
    assert_eq!(gsm8k, 1000);
    let first = d.rows.iter().find(|r| r.task == "gsm8k-train").expect("gsm8k-train");
    assert!(first.prompt.starts_with("Natalia sold clips"));
    assert_eq!(first.quality("zephyr-7b-beta"), Some(0.9));
    // Own splits kept where a file has one.
    assert_eq!(d.rows.iter().filter(|r| r.task == "arc-easy" && r.split == Split::Test).count(), 713);
    // Nothing from MMLU or the GSM8K test split.
    assert!(d.rows.iter().all(|r| !r.task.contains("mmlu") && r.task != "gsm8k-test" && r.task != "gsm8k"));
}

#[test]
fn reconciled_splits_never_share_a_question_and_keep_routerbench_test() {
    let specs: Vec<DatasetSpec> = [
        ("routerbench", "routerbench-subset"),
        ("arena-hard", "arena-hard-v1"),
        ("llmrouter", "llmrouter-9models"),
        ("routerdc", "routerdc-7models"),
    ]
    .iter()
    .map(|(k, f)| format!("{k}:{}", shared(f).display()).parse().expect("spec"))
    .collect();
    let datasets = data::load_all(&specs).expect("load all");
    let mut side = std::collections::HashMap::new();
    for row in datasets.iter().flat_map(|d| d.rows.iter()) {
        let previous = side.insert(row.key(), row.split);
        assert!(previous.is_none() || previous == Some(row.split), "question on both sides: {}", &row.prompt[..60.min(row.prompt.len())]);
    }
    let rb = &datasets[0];
    assert_eq!(rb.count(Split::Test), 953, "RouterBench's test split is untouched");
    // LLMRouter's test split repeats 119 training questions: the training copies are dropped;
    // its training questions that are RouterBench test questions move to its test side.
    let llm = &datasets[2];
    assert!(llm.count(Split::Test) >= 350);
    assert!(llm.count(Split::Train) <= 5398 - 119);
}
