//! How the semantic cache's audits compare answers (`cache::calibration::answers_agree`), on
//! real answers: RouterBench's test prompts answered by 11 models, each answer marked correct
//! or not. On ARC-Challenge and Winogrande (a letter each, written `A`, `A\n`, `(A)` …) two
//! correct answers agree and a correct and a wrong one do not; on MBPP (code) two passing
//! programs do the same thing in different words. Different models word the same answer
//! differently, which is harder than one model answering a paraphrase, so recall here is a
//! floor.
//!
//! An audit that calls a right hit wrong costs hits (the bound opens later); one that calls a
//! wrong hit right lets wrong answers through. The rule must make the second kind of error
//! (almost) never. Needs the shared data beside the checkout.

#![allow(clippy::expect_used)]

use std::path::PathBuf;

use cache::calibration::answers_agree;

#[test]
fn audits_never_call_a_right_and_a_wrong_answer_the_same() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routerbench-subset");
    assert!(data.is_dir(), "{} missing: the shared datasets live beside the checkout", data.display());
    for file in ["arc_challenge_test.csv", "winograde_test.csv", "mbpp_test.csv"] {
        let mut reader = csv::Reader::from_path(data.join(file)).expect("dataset CSV");
        let headers = reader.headers().expect("header").clone();
        let models: Vec<(usize, usize)> = headers
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let response = headers.iter().position(|h| h == format!("{name}|model_response"))?;
                Some((i, response))
            })
            .collect();
        assert!(models.len() >= 10, "{file}: {} models", models.len());
        let (mut right_pairs, mut right_agree, mut mixed_pairs, mut mixed_agree) = (0usize, 0usize, 0usize, 0usize);
        for record in reader.records() {
            let record = record.expect("row");
            let answers: Vec<(f64, &str)> = models
                .iter()
                .filter_map(|&(score, response)| {
                    let correct: f64 = record.get(score)?.trim().parse().ok()?;
                    let text = record.get(response).filter(|t| !t.trim().is_empty())?;
                    Some((correct, text))
                })
                .collect();
            for (i, a) in answers.iter().enumerate() {
                for b in &answers[i + 1..] {
                    if a.0 == 1.0 && b.0 == 1.0 {
                        right_pairs += 1;
                        right_agree += usize::from(answers_agree(a.1, b.1));
                    } else if a.0 != b.0 {
                        mixed_pairs += 1;
                        mixed_agree += usize::from(answers_agree(a.1, b.1));
                    }
                }
            }
        }
        eprintln!(
            "{file}: two correct answers judged to agree {right_agree}/{right_pairs} ({:.3}); a correct and a wrong one {mixed_agree}/{mixed_pairs}",
            right_agree as f64 / right_pairs as f64
        );
        assert!(mixed_pairs > 1_000 && right_pairs > 1_000);
        assert!(mixed_agree as f64 <= 0.005 * mixed_pairs as f64, "{file}: {mixed_agree} of {mixed_pairs} mixed pairs called the same");
        // Short answers: not so strict that nothing agrees. (On MBPP's programs nothing does:
        // 0 of 2,716 passing pairs. On verbose answers the audits call every hit wrong and the
        // bound never opens; that needs a judge model, not words.)
        if file != "mbpp_test.csv" {
            assert!(right_agree as f64 >= 0.2 * right_pairs as f64, "{file}: {right_agree} of {right_pairs}");
        }
    }
}
