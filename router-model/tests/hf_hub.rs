//! Loading through a Hugging Face cache laid out as the Python `huggingface_hub` does it,
//! without any network.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // tests fail loudly
mod common;

use std::path::Path;

use router_model::{cosine, BertEmbedder, Embedder, EmbedderOptions, Error, ModelSource};

const REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SHA: &str = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";

/// Builds `<cache>/models--sentence-transformers--all-MiniLM-L6-v2/{blobs,refs/main,snapshots/<sha>}`
/// with snapshot files symlinked to blobs, blobs symlinked to the fetched model.
fn build_cache(cache: &Path) {
    let repo = cache.join("models--sentence-transformers--all-MiniLM-L6-v2");
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(SHA);
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs").join("main"), SHA).expect("ref");
    let model = common::model_dir();
    for (i, file) in ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .enumerate()
    {
        let blob = blobs.join(format!("blob{i:02}"));
        std::os::unix::fs::symlink(model.join(file), &blob).expect("blob link");
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(format!("blob{i:02}")),
            snapshot.join(file),
        )
        .expect("snapshot link");
    }
}

#[test]
fn loads_from_a_local_hub_cache_by_branch_and_by_commit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    build_cache(tmp.path());
    let direct = common::embedder();
    let text = "Loaded from the hub cache without a network.";
    let want = direct.embed(text).expect("direct");

    for revision in ["main", SHA] {
        let source = ModelSource::HfHub {
            repo_id: REPO.into(),
            revision: revision.into(),
            cache_dir: Some(tmp.path().to_path_buf()),
        };
        let hub =
            BertEmbedder::load(&source, &EmbedderOptions::default()).expect("load from cache");
        assert_eq!(hub.id(), direct.id());
        let got = hub.embed(text).expect("embed");
        assert!(cosine(&got, &want) > 0.999999);
    }
}

#[test]
fn honours_hf_home_and_reports_missing_revisions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    build_cache(&tmp.path().join("hub"));
    // HF_HOME/hub is the default cache when no cache dir is given (and HF_HUB_CACHE is unset).
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", tmp.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let hub = BertEmbedder::load(&ModelSource::hub(REPO, "main"), &EmbedderOptions::default())
        .expect("load via HF_HOME");
    assert_eq!(hub.dim(), 384);

    let err = BertEmbedder::load(
        &ModelSource::hub(REPO, "v9-missing"),
        &EmbedderOptions::default(),
    )
    .expect_err("unknown revision");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
}
