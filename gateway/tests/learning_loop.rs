//! The learning loop through the real binary, on a few hundred RouterBench prompts: a weak
//! selector (trained here on Arena-Hard only) serves training prompts with exploration, every
//! answer is rated with its dataset label over `POST /v1/feedback`, `switchyard learn` runs on
//! the gateway's own outcome log, the gateway reloads, and test prompts it never trained on
//! are served with exploration off.
//!
//! Two runs of two rounds each, with challengers (the default): round 1's candidate becomes
//! the challenger and serves a share of round 2's exploring traffic, which judges it. With the
//! labels and the gate forced open (`--promote-margin=-1`, so the test judges the learner, not
//! the gate), nothing is promoted in round 1 and the challenger promoted in round 2 must serve
//! the route's trade-off better than the weak start on those test prompts; with labels that
//! favour no policy (shuffled across prompts and models) and the default gate, nothing is
//! promoted in either round. Every round sends the same prompts, so challengers are judged on
//! prompts they learned from (`--judge-repeated-prompts`; `switchyard learn` leaves those out by
//! default, and `bench/learning.sh` sends each round new prompts). Needs the shared data beside
//! the checkout and the embedder weights.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CANDIDATES: &str = "gpt-4-1106-preview,gpt-3.5-turbo-1106,mixtral-8x7b-instruct-v0.1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn switchyard(args: &[&str], dir: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(repo())
        .args(args)
        .arg("--cache-dir")
        .arg(dir.join("embeddings"))
        .env("RUST_LOG", "warn")
        .status()
        .expect("switchyard runs");
    assert!(status.success(), "switchyard {args:?} failed");
}

fn run_loop(
    dir: &Path,
    weak: &Path,
    name: &str,
    train_prompts: &str,
    test_prompts: &str,
    extra: &[&str],
) -> Value {
    let data = repo().join("../shared/data/routerbench-subset");
    let dataset = format!("routerbench:{}", data.display());
    let (work, out) = (
        dir.join(format!("{name}-work")),
        dir.join(format!("{name}-out")),
    );
    let mut args = vec![
        "eval",
        "learning",
        "--dataset",
        &dataset,
        "--candidates",
        CANDIDATES,
        "--rounds",
        "2",
        "--train-limit",
        train_prompts,
        "--test-limit",
        test_prompts,
        "--skip-offline",
        "--min-rows",
        "100",
    ];
    args.extend_from_slice(extra);
    let (start, work_s, out_s) = (
        weak.display().to_string(),
        work.display().to_string(),
        out.display().to_string(),
    );
    args.extend_from_slice(&["--start", &start, "--work", &work_s, "--out", &out_s]);
    switchyard(&args, dir);
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("learning.json")).expect("learning.json"))
            .expect("JSON");
    assert!(out.join("learning.md").is_file() && out.join("learning_curve.svg").is_file());
    report
}

#[test]
fn the_gateway_learns_from_its_own_traffic_and_promotes_nothing_on_noise() {
    let data = repo().join("../shared/data");
    assert!(
        data.is_dir(),
        "{} missing: the shared datasets live beside the checkout",
        data.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let weak = dir.path().join("weak");
    let arena = format!("arena-hard:{}", data.join("arena-hard-v1").display());
    let weak_s = weak.display().to_string();
    switchyard(
        &[
            "train",
            "--dataset",
            &arena,
            "--candidates",
            CANDIDATES,
            "--out",
            &weak_s,
        ],
        dir.path(),
    );

    // The `balanced` trade-off (cost weighs 0.05 per USD/1k; the weak start, trained where
    // gpt-4 wins by a wide margin, sends it most prompts and overpays) at the bench's
    // exploration. At `quality=1,cost=0.25` the start is already near the cost optimum (almost
    // all Mixtral) and the gain left to learn is mostly Mixtral against gpt-3.5, a small one.
    let labelled = [
        "--tradeoff",
        "quality=1,cost=0.05,latency=0",
        "--exploration",
        "0.3",
        "--temperature",
        "0.3",
        "--promote-margin=-1",
        "--judge-repeated-prompts",
    ];
    // Every training prompt (2,205) each round and the whole test split (945 prompts).
    let report = run_loop(dir.path(), &weak, "labels", "2205", "945", &labelled);
    let first = &report["loop"]["rounds"][0];
    assert_eq!(
        first["promoted"], false,
        "round 1 installs a challenger, never promotes: {first:#}"
    );
    assert!(
        first["learn_outcome"]
            .as_str()
            .is_some_and(|o| o.contains("new challenger")),
        "{first:#}"
    );
    // Exploration happened where it was asked for, and nowhere else (round 1: no challenger yet).
    let explored = first["explored_share"].as_f64().expect("share");
    assert!(explored > 0.1 && explored <= 0.3 + 0.06, "{explored}");
    assert_eq!(
        first["test"]["decisions"].get("explored"),
        None,
        "{first:#}"
    );
    let round = &report["loop"]["rounds"][1];
    assert_eq!(round["promoted"], true, "{round:#}");
    assert!(
        round["learn_outcome"]
            .as_str()
            .is_some_and(|o| o.contains("challenger promoted")),
        "{round:#}"
    );
    // Served better at the route's trade-off on prompts it never trained on. The learner
    // trains on the mean of two fits of the log (raw ratings; each rating's 40 nearest for
    // the same model). Measured on 2026-12-06 (AMD EPYC with AVX-512): round-2 gains through
    // this test's settings +0.0200 [+0.0031, +0.0353], +0.0178, +0.0246 (with neighbourhood
    // targets alone: +0.0097 to +0.0287 in six runs, and one CI run on another host lost
    // 0.0129); bench/README.md, "The learner across logs". The point estimate must be a
    // gain, and a loss beyond 0.02 ruled out: one round over 945 test prompts cannot show
    // more.
    let gain = &round["test"]["utility_gain"];
    assert!(
        gain["mean"].as_f64().expect("mean") > 0.0,
        "not better: {round:#}"
    );
    assert!(gain["lo95"].as_f64().expect("lo95") > -0.02, "{round:#}");
    // The weak start pays for gpt-4 on code prompts, where gpt-3.5 answers as well for a
    // thirtieth of the price: the learner must stop that, so the promoted checkpoint spends
    // at least 10% less per request (measured: 1.69 → 1.23–1.34 USD per 1,000).
    let cost = |test: &Value| test["cost_per_1k"]["mean"].as_f64().expect("cost");
    let start_cost = cost(&report["loop"]["start"]);
    assert!(
        cost(&round["test"]) < 0.9 * start_cost,
        "USD/1k {} vs start {start_cost}: {round:#}",
        cost(&round["test"])
    );
    // The promoted checkpoint is the one the gateway served after the reload.
    assert_ne!(
        round["test"]["checkpoint"],
        report["loop"]["start"]["checkpoint"]
    );
    // The challenger served the exploring route only: measurement (exploration off) never.
    assert_eq!(
        round["test"]["decisions"].get("explored"),
        None,
        "{round:#}"
    );

    // Shuffled labels (each answer rated with the label of a random prompt for a random
    // model) at a quality-only trade-off: by the feedback no policy is better than another, so
    // the gate at its default must keep the active checkpoint. (Its false-promotion rate on
    // such logs is measured in `training::db::gate_calibration`: under the 5% a one-sided 95%
    // bound allows.)
    let shuffled = run_loop(
        dir.path(),
        &weak,
        "shuffled",
        "600",
        "300",
        &[
            "--shuffle-feedback",
            "--tradeoff",
            "quality=1,cost=0,latency=0",
            "--judge-repeated-prompts",
        ],
    );
    let decisions =
        std::fs::read_to_string(dir.path().join("shuffled-work/active.promotions.jsonl"))
            .expect("decision log");
    assert!(
        decisions.lines().count() >= 2,
        "a decision recorded each round: {decisions}"
    );
    assert!(!decisions.contains("\"promoted\":true"), "{decisions}");
    for round in shuffled["loop"]["rounds"].as_array().expect("rounds") {
        assert_eq!(
            round["promoted"], false,
            "promoted on feedback that favours no policy: {round:#}"
        );
        assert_eq!(
            round["test"]["checkpoint"],
            shuffled["loop"]["start"]["checkpoint"]
        );
    }
}
