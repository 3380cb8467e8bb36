//! Selector training step, checkpoint round trip and compatibility checks.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // tests fail loudly

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use router_model::selector::{input_row, loss};
use router_model::{
    Architecture, Checkpoint, CheckpointMeta, EmbedderRef, Error, FeatureNorm, LossWeights,
    RequestFeatures, Selector, Targets,
};

const DIM: usize = 8;
const EMBEDDER: &str = "test-embedder#max_tokens=128";

fn candidates() -> Vec<String> {
    vec![
        "strong-model".into(),
        "weak-model".into(),
        "code-model".into(),
    ]
}

/// Synthetic data with a learnable rule: the strong model is always good, the weak one only
/// when the first embedding component is positive, the code model when has_code is set.
fn batch(n: usize, norm: &FeatureNorm) -> candle_core::Result<(Tensor, Targets)> {
    let dev = Device::Cpu;
    let emb = Tensor::randn(0f32, 1.0, (n, DIM), &dev)?.to_vec2::<f32>()?;
    let mut rows = Vec::new();
    let (mut q, mut lat, mut tok, mut diff) = (vec![], vec![], vec![], vec![]);
    for (i, e) in emb.iter().enumerate() {
        let features = RequestFeatures {
            prompt_tokens: 10 + (i as u32 * 7) % 500,
            turns: 1,
            has_code: i % 3 == 0,
            has_tools: false,
            max_tokens: None,
        };
        rows.extend(input_row(e, &features, norm));
        let qs = [
            1.0f32,
            if e[0] > 0.0 { 1.0 } else { 0.0 },
            if features.has_code { 1.0 } else { 0.0 },
        ];
        diff.push(qs.iter().sum::<f32>() / 3.0);
        q.extend(qs);
        lat.extend([7.0f32, 5.0, 6.0]);
        tok.extend([5.5f32, 4.0, 5.0]);
    }
    let input_dim = DIM + RequestFeatures::LEN;
    let c = candidates().len();
    let input = Tensor::from_vec(rows, (n, input_dim), &dev)?;
    let ones = Tensor::ones((n, c), DType::F32, &dev)?;
    let targets = Targets {
        quality: Tensor::from_vec(q, (n, c), &dev)?,
        quality_mask: ones.clone(),
        log_latency_ms: Tensor::from_vec(lat, (n, c), &dev)?,
        latency_mask: ones.clone(),
        log_output_tokens: Tensor::from_vec(tok, (n, c), &dev)?,
        // pretend the code model's lengths were never observed
        tokens_mask: Tensor::from_vec(
            (0..n).flat_map(|_| [1f32, 1.0, 0.0]).collect::<Vec<_>>(),
            (n, c),
            &dev,
        )?,
        difficulty: Tensor::from_vec(diff, n, &dev)?,
        difficulty_mask: Tensor::ones(n, DType::F32, &dev)?,
    };
    Ok((input, targets))
}

fn norm() -> FeatureNorm {
    let rows: Vec<_> = (0..100)
        .map(|i| {
            RequestFeatures {
                prompt_tokens: 10 + (i * 7) % 500,
                turns: 1,
                has_code: i % 3 == 0,
                has_tools: false,
                max_tokens: None,
            }
            .to_vec()
        })
        .collect();
    FeatureNorm::fit(&rows)
}

fn train(steps: usize) -> (VarMap, Selector, Vec<f32>, FeatureNorm, Architecture) {
    let norm = norm();
    let arch = Architecture {
        hidden_dims: vec![32],
        ..Architecture::new(DIM, candidates().len())
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let selector = Selector::new(vb, &arch).expect("build");
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            ..ParamsAdamW::default()
        },
    )
    .expect("optimizer");
    let (input, targets) = batch(256, &norm).expect("data");
    let mut losses = Vec::new();
    for _ in 0..steps {
        let out = selector.forward_t(&input, true).expect("forward");
        let l = loss(&out, &targets, &LossWeights::default()).expect("loss");
        losses.push(l.to_scalar::<f32>().expect("scalar"));
        opt.backward_step(&l).expect("step");
    }
    (varmap, selector, losses, norm, arch)
}

fn meta(arch: &Architecture, norm: &FeatureNorm) -> CheckpointMeta {
    let mut meta = CheckpointMeta::new(
        arch.clone(),
        candidates(),
        norm.clone(),
        EmbedderRef {
            id: EMBEDDER.into(),
            dim: DIM,
        },
        "blake3:synthetic",
    );
    meta.metrics
        .insert("val_loss".into(), serde_json::json!(0.123));
    meta
}

#[test]
fn training_reduces_loss_and_checkpoint_round_trips() {
    let (varmap, selector, losses, norm, arch) = train(150);
    let first = losses[0];
    let last = *losses.last().expect("losses");
    assert!(last < first * 0.5, "loss {first} -> {last}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    let meta = meta(&arch, &norm);
    Checkpoint::save(&dir, &varmap, &meta).expect("save");
    assert!(dir.join("selector.safetensors").is_file());
    assert!(dir.join("selector.json").is_file());

    let loaded = Checkpoint::load(&dir, EMBEDDER, DIM).expect("load");
    assert_eq!(loaded.meta, meta);
    assert_eq!(loaded.candidates(), candidates().as_slice());

    let features = RequestFeatures::for_prompt("def f(x):\n    return x\nprint(f(1));");
    for seed in 0..5 {
        let emb: Vec<f32> = (0..DIM).map(|i| ((i + seed) as f32 * 0.37).sin()).collect();
        let predictions = loaded.predict(&emb, &features).expect("predict");
        let (in_memory, _) = selector
            .predict_row(&input_row(&emb, &features, &norm))
            .expect("in-memory");
        assert_eq!(predictions.len(), 3);
        // Serving runs plain loops over copied weights, training runs candle: same numbers.
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
        for (p, m) in predictions.iter().zip(&in_memory) {
            assert!(close(p.quality, m.quality), "{p:?} vs {m:?}");
            assert!(close(p.latency_ms, m.latency_ms), "{p:?} vs {m:?}");
            assert!(close(p.output_tokens, m.output_tokens), "{p:?} vs {m:?}");
        }
        // The rules in the data were learned: the strong model is good and slower.
        assert_eq!(predictions[0].model_id, "strong-model");
        assert!(predictions[0].quality > 0.8, "{predictions:?}");
        assert!(
            predictions[0].latency_ms > predictions[1].latency_ms,
            "{predictions:?}"
        );
    }

    // The same predictions from the in-memory network, without the disk.
    let in_memory_ckpt = Checkpoint::from_parts(meta.clone(), selector.clone()).expect("parts");
    assert!(in_memory_ckpt.dir().is_none());
    let emb: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.37).sin()).collect();
    assert_eq!(
        in_memory_ckpt.predict(&emb, &features).expect("predict"),
        loaded.predict(&emb, &features).expect("predict")
    );

    // Saving again replaces the checkpoint in place.
    let mut meta2 = meta.clone();
    meta2.training_data_hash = "blake3:other".into();
    Checkpoint::save(&dir, &varmap, &meta2).expect("overwrite");
    assert_eq!(
        Checkpoint::read_meta(&dir)
            .expect("meta")
            .training_data_hash,
        "blake3:other"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("ckpt")],
        "no temp dirs left"
    );
}

#[test]
fn checkpoint_for_another_embedder_is_rejected() {
    let (varmap, _, _, norm, arch) = train(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    Checkpoint::save(&dir, &varmap, &meta(&arch, &norm)).expect("save");

    let err = Checkpoint::load(
        &dir,
        "sentence-transformers/other-model#max_tokens=128",
        DIM,
    )
    .expect_err("other embedder");
    assert!(matches!(err, Error::IncompatibleCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("test-embedder"), "{err}");
    let err = Checkpoint::load(&dir, EMBEDDER, 384).expect_err("other dim");
    assert!(matches!(err, Error::IncompatibleCheckpoint { .. }), "{err}");
}

#[test]
fn save_refuses_to_clobber_a_foreign_directory_and_load_reports_missing() {
    let (varmap, _, _, norm, arch) = train(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("precious.txt"), "keep me").expect("write");
    let err = Checkpoint::save(tmp.path(), &varmap, &meta(&arch, &norm)).expect_err("refuse");
    assert!(err.to_string().contains("precious.txt"), "{err}");
    assert!(tmp.path().join("precious.txt").is_file());

    let err = Checkpoint::load(tmp.path().join("nope"), EMBEDDER, DIM).expect_err("missing");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn like_resolution_borrows_a_known_head() {
    let (varmap, _, _, norm, arch) = train(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    Checkpoint::save(&dir, &varmap, &meta(&arch, &norm)).expect("save");
    let ckpt = Checkpoint::load(&dir, EMBEDDER, DIM).expect("load");
    let own = ckpt
        .resolve_candidate("weak-model", Some("strong-model"))
        .expect("own");
    assert_eq!((own.index, own.borrowed), (1, false));
    let borrowed = ckpt
        .resolve_candidate("brand-new", Some("code-model"))
        .expect("like");
    assert_eq!((borrowed.index, borrowed.borrowed), (2, true));
    assert!(ckpt.resolve_candidate("brand-new", None).is_none());
    assert!(ckpt
        .resolve_candidate("brand-new", Some("unknown"))
        .is_none());
}

#[test]
fn metadata_with_wrong_features_is_rejected() {
    let (varmap, _, _, norm, mut arch) = train(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    arch.feature_names[0] = "something_else".into();
    let err = Checkpoint::save(tmp.path().join("c"), &varmap, &meta(&arch, &norm))
        .expect_err("invalid meta");
    assert!(matches!(err, Error::IncompatibleCheckpoint { .. }), "{err}");
}
