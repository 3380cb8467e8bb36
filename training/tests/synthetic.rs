//! The trainer recovers a task whose answer is known, deterministically.

#![allow(clippy::expect_used, clippy::panic)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_model::RequestFeatures;
use training::eval::{auc, predict};
use training::{train, Example, Init, TrainConfig};

const DIM: usize = 16;

/// Model `a` is right when the first coordinate is positive, `b` when it is negative; `a`
/// writes long answers when the second coordinate is positive.
fn synthetic(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let a_good = v[0] > 0.0;
            let mut e = Example::empty(v.clone(), RequestFeatures::for_prompt("same length"), 2, format!("q{seed}-{i}"));
            e.quality = vec![Some(if a_good { 1.0 } else { 0.0 }), Some(if a_good { 0.0 } else { 1.0 })];
            e.log_output_tokens = vec![Some(if v[1] > 0.0 { 400f32.ln() } else { 20f32.ln() }), None];
            e.difficulty = Some(0.5);
            e
        })
        .collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        hidden_dims: vec![32],
        max_epochs: 60,
        batch_size: 64,
        learning_rate: 5e-3,
        patience: 8,
        progress: false,
        ..TrainConfig::default()
    }
}

#[test]
fn recovers_a_known_routing_rule() {
    let train_set = synthetic(1500, 1);
    let trained = train::train(&train_set, 2, &config(), Init::Random).expect("train");
    assert!(trained.best_epoch >= 1);
    assert!(trained.validation_examples > 50 && trained.fit_examples > 1000);

    let test = synthetic(500, 2);
    let inputs: Vec<(&[f32], RequestFeatures)> = test.iter().map(|e| (e.embedding.as_slice(), e.features)).collect();
    let pred = predict(&trained.selector, &trained.feature_norm, &inputs).expect("predict");
    for j in 0..2 {
        let scores: Vec<f32> = pred.quality.iter().map(|q| q[j]).collect();
        let labels: Vec<bool> = test.iter().map(|e| e.quality[j] == Some(1.0)).collect();
        let a = auc(&scores, &labels).expect("both classes");
        assert!(a > 0.95, "candidate {j}: quality AUC {a}");
    }
    // The token head learned `a`'s answer lengths; `b` had none, so it borrows `a`'s head
    // (the mean of the candidates with data) instead of serving noise.
    let long: Vec<f32> = test.iter().zip(&pred.log_tokens).filter(|(e, _)| e.embedding[1] > 0.3).map(|(_, t)| t[0].exp()).collect();
    let short: Vec<f32> = test.iter().zip(&pred.log_tokens).filter(|(e, _)| e.embedding[1] < -0.3).map(|(_, t)| t[0].exp()).collect();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(mean(&long) > 200.0 && mean(&short) < 50.0, "long {} short {}", mean(&long), mean(&short));
    assert!(pred.log_tokens.iter().all(|t| (t[0] - t[1]).abs() < 1e-4));
    assert!(trained.notes.iter().any(|n| n.starts_with("tokens head")), "{:?}", trained.notes);
}

#[test]
fn same_seed_same_weights() {
    let data = synthetic(300, 3);
    let cfg = TrainConfig { max_epochs: 5, ..config() };
    let a = train::train(&data, 2, &cfg, Init::Random).expect("train");
    let b = train::train(&data, 2, &cfg, Init::Random).expect("train");
    let c = train::train(&data, 2, &TrainConfig { seed: 99, ..cfg }, Init::Random).expect("train");
    let inputs: Vec<(&[f32], RequestFeatures)> = data.iter().take(20).map(|e| (e.embedding.as_slice(), e.features)).collect();
    let pa = predict(&a.selector, &a.feature_norm, &inputs).expect("predict").quality;
    let pb = predict(&b.selector, &b.feature_norm, &inputs).expect("predict").quality;
    let pc = predict(&c.selector, &c.feature_norm, &inputs).expect("predict").quality;
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
}
