//! The checkpoint contract between training, serving and evals, defined once.
//!
//! A checkpoint is a directory with two files:
//! - `selector.safetensors`: the [`Selector`]'s weights (names as in [`Selector::new`]);
//! - `selector.json`: [`CheckpointMeta`] — schema version, architecture, candidate ids in
//!   head order, feature normalisation, the embedder it was trained on, a hash of the
//!   training data, validation metrics and the creation time.
//!
//! Serving refuses a checkpoint trained on another embedder: its vectors would live in a
//! different space and every prediction would be silently wrong.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::RequestFeatures;
use crate::selector::{input_row, Architecture, FeatureNorm, FrozenSelector, Selector};

/// Version of the `selector.json` layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;
/// Weights file inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "selector.safetensors";
/// Metadata file inside a checkpoint directory.
pub const META_FILE: &str = "selector.json";

/// Which embedder produced the training inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderRef {
    /// [`crate::Embedder::id`] of the embedder, e.g.
    /// `sentence-transformers/all-MiniLM-L6-v2#max_tokens=128`.
    pub id: String,
    pub dim: usize,
}

/// Contents of `selector.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub schema_version: u32,
    pub architecture: Architecture,
    /// Candidate model ids, in the order of the heads' outputs.
    pub candidates: Vec<String>,
    pub feature_norm: FeatureNorm,
    pub embedder: EmbedderRef,
    /// Hash of the training data (e.g. blake3 over the training rows), to tell runs apart.
    pub training_data_hash: String,
    /// Free-form validation metrics (APGR, AUC, per-head losses, ...).
    #[serde(default)]
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// RFC 3339 creation time (UTC).
    pub created_at: String,
}

impl CheckpointMeta {
    /// Metadata for a freshly trained selector, stamped with the current time.
    pub fn new(
        architecture: Architecture,
        candidates: Vec<String>,
        feature_norm: FeatureNorm,
        embedder: EmbedderRef,
        training_data_hash: impl Into<String>,
    ) -> Self {
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string());
        Self {
            schema_version: SCHEMA_VERSION,
            architecture,
            candidates,
            feature_norm,
            embedder,
            training_data_hash: training_data_hash.into(),
            metrics: BTreeMap::new(),
            created_at,
        }
    }

    /// Checks internal consistency (and that serving computes the features it expects).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema version {} (this build reads {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        let arch = &self.architecture;
        if arch.num_candidates != self.candidates.len() || self.candidates.is_empty() {
            return Err(format!(
                "{} candidates listed for {} heads",
                self.candidates.len(),
                arch.num_candidates
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.candidates.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(format!("candidate {dup} listed twice"));
        }
        if arch.embedding_dim != self.embedder.dim {
            return Err(format!(
                "architecture expects {}-d embeddings, embedder is {}-d",
                arch.embedding_dim, self.embedder.dim
            ));
        }
        if arch.feature_names != RequestFeatures::NAMES {
            return Err(format!(
                "trained on features {:?}, this build computes {:?}",
                arch.feature_names,
                RequestFeatures::NAMES
            ));
        }
        self.feature_norm.validate(arch.feature_names.len())?;
        if time::OffsetDateTime::parse(
            &self.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .is_err()
        {
            return Err(format!("created_at {:?} is not RFC 3339", self.created_at));
        }
        Ok(())
    }
}

/// A candidate's head, possibly borrowed from a known model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedCandidate {
    /// Index into the checkpoint's candidates (and every head's outputs).
    pub index: usize,
    /// True when the model has no head of its own and uses its `like` model's.
    pub borrowed: bool,
}

/// Finds the head for a configured model: its own if the checkpoint was trained on it, else
/// the head of `like` (a known model it should behave like) until its own data exists.
pub fn resolve_candidate(
    candidates: &[String],
    name: &str,
    like: Option<&str>,
) -> Option<ResolvedCandidate> {
    if let Some(index) = candidates.iter().position(|c| c == name) {
        return Some(ResolvedCandidate {
            index,
            borrowed: false,
        });
    }
    let like = like?;
    candidates
        .iter()
        .position(|c| c == like)
        .map(|index| ResolvedCandidate {
            index,
            borrowed: true,
        })
}

/// What the selector expects of one candidate for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub model_id: String,
    /// P(good answer), 0..1.
    pub quality: f32,
    /// Expected end-to-end latency in milliseconds.
    pub latency_ms: f32,
    /// Expected output tokens (cost = this × the model's output price, outside).
    pub output_tokens: f32,
}

/// A loaded, validated checkpoint: metadata plus the network, ready to predict.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    /// The network as candle tensors (for batch evaluation or fine-tuning).
    pub selector: Selector,
    /// The same weights as plain arrays; what [`Checkpoint::predict`] runs.
    frozen: FrozenSelector,
    dir: Option<PathBuf>,
}

impl Checkpoint {
    /// Loads `dir`, refusing it unless it was trained on `expected_embedder_id` with
    /// `expected_dim`-d vectors.
    pub fn load(
        dir: impl AsRef<Path>,
        expected_embedder_id: &str,
        expected_dim: usize,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let meta = Self::read_meta(dir)?;
        let incompatible = |reason: String| Error::IncompatibleCheckpoint {
            path: dir.to_path_buf(),
            reason,
        };
        if meta.embedder.id != expected_embedder_id || meta.embedder.dim != expected_dim {
            return Err(incompatible(format!(
                "trained on embedder {} ({}-d), serving uses {expected_embedder_id} \
                 ({expected_dim}-d)",
                meta.embedder.id, meta.embedder.dim
            )));
        }
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::NotFound {
                what: "selector weights",
                path: weights,
                hint: "a checkpoint directory needs selector.safetensors beside selector.json"
                    .into(),
            });
        }
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let selector = Selector::new(vb, &meta.architecture)
            .map_err(|e| incompatible(format!("weights do not fit the architecture: {e}")))?;
        let frozen = FrozenSelector::new(&selector)?;
        Ok(Self {
            meta,
            selector,
            frozen,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// A checkpoint from an in-memory network (e.g. to evaluate right after training without
    /// a round trip through the disk). Copies the selector's current weights.
    pub fn from_parts(meta: CheckpointMeta, selector: Selector) -> Result<Self> {
        meta.validate()
            .map_err(|reason| Error::InvalidInput(format!("checkpoint metadata: {reason}")))?;
        if selector.architecture() != &meta.architecture {
            return Err(Error::InvalidInput(
                "the selector's architecture differs from the metadata's".into(),
            ));
        }
        let frozen = FrozenSelector::new(&selector)?;
        Ok(Self {
            meta,
            selector,
            frozen,
            dir: None,
        })
    }

    /// Reads and validates `selector.json` alone (evals and tooling that need no weights).
    pub fn read_meta(dir: impl AsRef<Path>) -> Result<CheckpointMeta> {
        let dir = dir.as_ref();
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    what: "selector checkpoint",
                    path: path.clone(),
                    hint: "train a selector or point the gateway at a checkpoint directory".into(),
                }
            } else {
                Error::io(format!("reading {}", path.display()), e)
            }
        })?;
        let meta: CheckpointMeta = serde_json::from_str(&text)
            .map_err(|e| Error::json(format!("parsing {}", path.display()), e))?;
        meta.validate()
            .map_err(|reason| Error::IncompatibleCheckpoint {
                path: dir.to_path_buf(),
                reason,
            })?;
        Ok(meta)
    }

    /// Writes `varmap` and `meta` as a checkpoint directory. Both files are written into a
    /// temporary sibling directory which then replaces `dir`, so a reader never sees new
    /// weights with old metadata (or half a file). Refuses to replace a directory holding
    /// anything but a checkpoint.
    pub fn save(dir: impl AsRef<Path>, varmap: &VarMap, meta: &CheckpointMeta) -> Result<()> {
        let dir = dir.as_ref();
        meta.validate()
            .map_err(|reason| Error::IncompatibleCheckpoint {
                path: dir.to_path_buf(),
                reason,
            })?;
        let name = dir
            .file_name()
            .ok_or_else(|| Error::InvalidInput(format!("{} has no file name", dir.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        if dir.exists() {
            ensure_only_checkpoint_files(dir)?;
        }

        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let tmp = parent.join(format!(".{name}.tmp-{unique}"));
        std::fs::create_dir(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let written = write_files(&tmp, varmap, meta);
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let old = parent.join(format!(".{name}.old-{unique}"));
        let had_old = dir.exists();
        if had_old {
            std::fs::rename(dir, &old)
                .map_err(|e| Error::io(format!("moving aside {}", dir.display()), e))?;
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(format!("renaming into {}", dir.display()), e));
        }
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    /// Where this checkpoint was loaded from (`None` when built with `from_parts`).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Candidate ids in head order.
    pub fn candidates(&self) -> &[String] {
        &self.meta.candidates
    }

    /// See [`resolve_candidate`].
    pub fn resolve_candidate(&self, name: &str, like: Option<&str>) -> Option<ResolvedCandidate> {
        resolve_candidate(&self.meta.candidates, name, like)
    }

    /// Predictions for every candidate, in [`Checkpoint::candidates`] order.
    pub fn predict(
        &self,
        embedding: &[f32],
        features: &RequestFeatures,
    ) -> Result<Vec<Prediction>> {
        Ok(self.predict_with_difficulty(embedding, features)?.0)
    }

    /// [`Checkpoint::predict`] plus the predicted difficulty (mean quality across models).
    pub fn predict_with_difficulty(
        &self,
        embedding: &[f32],
        features: &RequestFeatures,
    ) -> Result<(Vec<Prediction>, f32)> {
        if embedding.len() != self.meta.embedder.dim {
            return Err(Error::InvalidInput(format!(
                "embedding has {} values, checkpoint expects {}",
                embedding.len(),
                self.meta.embedder.dim
            )));
        }
        let row = input_row(embedding, features, &self.meta.feature_norm);
        let (values, difficulty) = self.frozen.predict_row(&row)?;
        let predictions = self
            .meta
            .candidates
            .iter()
            .zip(values)
            .map(|(model_id, v)| Prediction {
                model_id: model_id.clone(),
                quality: v.quality,
                latency_ms: v.latency_ms,
                output_tokens: v.output_tokens,
            })
            .collect();
        Ok((predictions, difficulty))
    }
}

fn ensure_only_checkpoint_files(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let name = entry.file_name();
        if name != WEIGHTS_FILE && name != META_FILE {
            return Err(Error::InvalidInput(format!(
                "{} holds {:?}, which is not part of a checkpoint; refusing to replace it",
                dir.display(),
                name
            )));
        }
    }
    Ok(())
}

fn write_files(tmp: &Path, varmap: &VarMap, meta: &CheckpointMeta) -> Result<()> {
    let weights = tmp.join(WEIGHTS_FILE);
    varmap.save(&weights)?;
    sync_file(&weights)?;
    let json =
        serde_json::to_vec_pretty(meta).map_err(|e| Error::json("serialising metadata", e))?;
    let meta_path = tmp.join(META_FILE);
    let mut file = std::fs::File::create(&meta_path)
        .map_err(|e| Error::io(format!("creating {}", meta_path.display()), e))?;
    file.write_all(&json)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", meta_path.display()), e))?;
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolves_own_head_then_like_then_nothing() {
        let c = names(&["gpt-4", "mixtral"]);
        assert_eq!(
            resolve_candidate(&c, "mixtral", Some("gpt-4")),
            Some(ResolvedCandidate {
                index: 1,
                borrowed: false
            })
        );
        assert_eq!(
            resolve_candidate(&c, "new-model", Some("gpt-4")),
            Some(ResolvedCandidate {
                index: 0,
                borrowed: true
            })
        );
        assert_eq!(resolve_candidate(&c, "new-model", Some("unknown")), None);
        assert_eq!(resolve_candidate(&c, "new-model", None), None);
    }
}
