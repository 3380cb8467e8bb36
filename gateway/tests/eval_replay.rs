//! `switchyard eval replay` on a handful of RouterBench test prompts: the real binary starts
//! the mock upstream (replay mode) and the gateway in-process, sends each prompt over HTTP,
//! and compares what was served with the offline choice. Needs the shared data beside the
//! checkout (`../shared/data`) and the embedder weights.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn served_model_is_the_offline_choice_and_quality_is_its_label() {
    let data = repo().join("../shared/data/routerbench-subset");
    assert!(data.is_dir(), "{} missing: the shared datasets live beside the checkout", data.display());
    let out = tempfile::tempdir().expect("tempdir");
    // `cheap` and `best` make different choices; both must agree with offline.
    for tradeoff in ["best", "quality=1,cost=0.3,latency=0"] {
        let status = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .current_dir(repo())
            .args(["eval", "replay", "--checkpoint", "models/selector/default", "--split", "test", "--limit", "6"])
            .arg("--dataset")
            .arg(format!("routerbench:{}", data.display()))
            .args(["--tradeoff", tradeoff])
            .arg("--out")
            .arg(out.path())
            .arg("--cache-dir")
            .arg(out.path().join("embeddings"))
            .env("RUST_LOG", "warn")
            .status()
            .expect("switchyard runs");
        assert!(status.success(), "eval replay failed for {tradeoff}");
        let report: Value = serde_json::from_slice(&std::fs::read(out.path().join("replay.json")).expect("replay.json")).expect("JSON");
        assert_eq!(report["prompts"], 6);
        assert_eq!(report["agreement"], 1.0, "{tradeoff}: {report:#}");
        assert_eq!(report["decisions"]["selected"], 6, "{report:#}");

        // Realised quality is the dataset's label for the model that answered: checked
        // against the importer independently of the replay's own bookkeeping.
        let dataset = training::data::load(&format!("routerbench:{}", data.display()).parse().expect("spec")).expect("dataset");
        let test: Vec<&training::Row> = dataset.rows.iter().filter(|r| r.split == training::Split::Test).collect();
        let records = report["records"].as_array().expect("records");
        assert_eq!(records.len(), 6);
        for r in records {
            let row = test[r["index"].as_u64().expect("index") as usize];
            let served = r["served"].as_str().expect("served");
            assert_eq!(r["offline"].as_str(), Some(served));
            let label = row.quality(served).expect("label");
            assert_eq!(r["realised_quality"].as_f64(), Some(f64::from(label)), "{r}");
        }
        if tradeoff == "best" {
            std::fs::rename(out.path().join("replay.json"), out.path().join("best.json")).expect("rename");
        }
    }
    // The two trade-offs chose differently somewhere (else the test could not catch a
    // gateway that ignores the route's trade-off).
    let best: Value = serde_json::from_slice(&std::fs::read(out.path().join("best.json")).expect("best")).expect("JSON");
    let cheap: Value = serde_json::from_slice(&std::fs::read(out.path().join("replay.json")).expect("cheap")).expect("JSON");
    let served = |v: &Value| v["records"].as_array().map(|r| r.iter().map(|x| x["served"].clone()).collect::<Vec<_>>());
    assert_ne!(served(&best), served(&cheap));
}
