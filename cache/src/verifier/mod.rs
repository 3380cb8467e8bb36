//! The semantic cache's second step: does the cached answer answer this query?
//!
//! Step one (nearest neighbour above a loose cosine) finds candidates; pooled MiniLM cosine
//! alone cannot tell "sort ascending" from "sort descending" or "Poles dislike Russians" from
//! "Russians dislike Poles" (on Quora pairs it stays below 0.9 precision at any useful
//! recall). A wrong hit serves an answer to a different question, so the verifier is built
//! for precision:
//! 1. [`lexical_veto`]: hard guards on the words that change an answer;
//! 2. a logistic regression over pair features pooling loses (lexical overlap, word order,
//!    entity and length mismatch, optionally BERTScore-style token alignment), trained on
//!    Quora question pairs split by question, with the operating threshold set at 0.95
//!    precision on a held-out calibration part.
//!
//! The checkpoint is a directory with `verifier.json` (see [`VerifierCheckpoint`]).

mod eval;
mod eval_file;
mod features;
mod logistic;
mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use router_model::BertEmbedder;
use serde::{Deserialize, Serialize};

pub use eval::{
    normalise_question, pair_scores, pair_split, pr_at, pr_curve, pr_svg, question_split,
    threshold_for_precision, thresholds, EvalPair, PrPoint, Split,
};
pub use eval_file::{eval_cache, EvalCacheOptions, EvalCacheReport};
pub use features::{TokenPair, BASE_FEATURES, TOKEN_FEATURES};
pub use logistic::Logistic;
pub use text::lexical_veto;

/// File name of the checkpoint inside its directory.
pub const CHECKPOINT_FILE: &str = "verifier.json";

/// Where the shipped checkpoint lives, relative to the repository root.
pub const DEFAULT_CHECKPOINT_SUBDIR: &str = "models/verifier/default";

/// Checkpoint format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Errors loading or using a verifier.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid verifier checkpoint {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("embedder: {0}")]
    Embedder(#[source] router_model::Error),
    #[error(
        "verifier checkpoint {0} uses token alignment: load it with Verifier::load_with_embedder"
    )]
    NeedsEmbedder(PathBuf),
}

/// How the model was trained and what it measured; written by training, read by evals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierCheckpoint {
    pub format_version: u32,
    /// Feature names in model order: [`BASE_FEATURES`], then [`TOKEN_FEATURES`] when
    /// `token_alignment`.
    pub features: Vec<String>,
    /// Whether scoring needs both texts' token vectors (an extra embedder pass per check).
    pub token_alignment: bool,
    /// Whether [`lexical_veto`] runs first (score 0 on a veto).
    pub lexical_veto: bool,
    /// Pairs below this cosine score 0: the model was fitted only on the candidates above
    /// it (what the nearest-neighbour step passes on), not on easy negatives.
    #[serde(default)]
    pub min_cos: f32,
    pub model: Logistic,
    /// The shipped operating point: serve the cached answer when `score >= threshold`.
    pub threshold: f32,
    /// Embedder the cosine feature and token vectors come from.
    pub embedder: String,
    /// Data, split and hash the model was trained on.
    pub training: serde_json::Value,
    /// Calibration and validation figures at the threshold, beside plain cosine.
    pub metrics: serde_json::Value,
}

impl VerifierCheckpoint {
    /// Reads `dir/verifier.json` and checks it is usable by this build.
    pub fn read(dir: &Path) -> Result<Self, VerifierError> {
        let path = dir.join(CHECKPOINT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| VerifierError::Io {
            path: path.clone(),
            source,
        })?;
        let ck: Self = serde_json::from_str(&text).map_err(|source| VerifierError::Json {
            path: path.clone(),
            source,
        })?;
        let invalid = |reason: String| VerifierError::Invalid {
            path: path.clone(),
            reason,
        };
        if ck.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format_version {} (this build reads {FORMAT_VERSION})",
                ck.format_version
            )));
        }
        let expected = feature_names(ck.token_alignment);
        if ck.features != expected {
            return Err(invalid(format!(
                "feature list {:?} differs from this build's {expected:?}",
                ck.features
            )));
        }
        let d = expected.len();
        if ck.model.weights.len() != d || ck.model.mean.len() != d || ck.model.std.len() != d {
            return Err(invalid(format!(
                "model has the wrong width for {d} features"
            )));
        }
        if ck.model.std.iter().any(|s| s.is_nan() || *s <= 0.0) || !ck.threshold.is_finite() {
            return Err(invalid("non-positive std or non-finite threshold".into()));
        }
        Ok(ck)
    }

    /// Writes `dir/verifier.json`, creating `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), VerifierError> {
        std::fs::create_dir_all(dir).map_err(|source| VerifierError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(CHECKPOINT_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| VerifierError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text + "\n").map_err(|source| VerifierError::Io { path, source })
    }
}

/// The feature list of a model with or without token alignment.
pub fn feature_names(token_alignment: bool) -> Vec<String> {
    let mut names: Vec<String> = BASE_FEATURES.iter().map(|s| (*s).to_string()).collect();
    if token_alignment {
        names.extend(TOKEN_FEATURES.iter().map(|s| (*s).to_string()));
    }
    names
}

/// Cosine of two vectors (need not be unit).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    router_model::cosine(a, b)
}

/// Feature vector of a pair, as the model sees it. `tokens` is required when
/// `token_alignment` is set (missing token vectors give the worst alignment: fail closed).
pub fn pair_features(
    query: &str,
    cached: &str,
    cos: f32,
    token_alignment: bool,
    tokens: Option<TokenPair<'_>>,
) -> Vec<f32> {
    let qa = text::Analysed::new(query);
    let ca = text::Analysed::new(cached);
    features_of(&qa, &ca, query, cached, cos, token_alignment, tokens)
}

fn features_of(
    qa: &text::Analysed,
    ca: &text::Analysed,
    query: &str,
    cached: &str,
    cos: f32,
    token_alignment: bool,
    tokens: Option<TokenPair<'_>>,
) -> Vec<f32> {
    let mut f = features::base_features(qa, ca, query, cached, cos);
    if token_alignment {
        match tokens {
            Some(t) => f.extend(features::token_features(t)),
            None => f.extend(std::iter::repeat_n(0.0, TOKEN_FEATURES.len())),
        }
    }
    f
}

/// A loaded verifier. Cheap to share (`Send + Sync`); scoring allocates only small vectors.
pub struct Verifier {
    checkpoint: VerifierCheckpoint,
    embedder: Option<Arc<BertEmbedder>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("threshold", &self.checkpoint.threshold)
            .field("token_alignment", &self.checkpoint.token_alignment)
            .finish_non_exhaustive()
    }
}

/// Why a pair scored what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Probability that the cached text asks the same thing; 0 on a veto.
    pub score: f32,
    /// The lexical guard that fired, if any.
    pub veto: Option<&'static str>,
}

impl Verifier {
    /// Loads a checkpoint without token alignment (the default one).
    pub fn load(dir: &Path) -> Result<Self, VerifierError> {
        let checkpoint = VerifierCheckpoint::read(dir)?;
        if checkpoint.token_alignment {
            return Err(VerifierError::NeedsEmbedder(dir.to_path_buf()));
        }
        Ok(Self {
            checkpoint,
            embedder: None,
        })
    }

    /// Loads any checkpoint; `embedder` supplies token vectors when the model aligns tokens
    /// (one extra forward pass over both texts per [`Verifier::score`]).
    pub fn load_with_embedder(
        dir: &Path,
        embedder: Arc<BertEmbedder>,
    ) -> Result<Self, VerifierError> {
        let checkpoint = VerifierCheckpoint::read(dir)?;
        Ok(Self {
            checkpoint,
            embedder: Some(embedder),
        })
    }

    /// Builds from an in-memory checkpoint (training and tests).
    pub fn from_checkpoint(
        checkpoint: VerifierCheckpoint,
        embedder: Option<Arc<BertEmbedder>>,
    ) -> Self {
        Self {
            checkpoint,
            embedder,
        }
    }

    /// The checkpoint it runs.
    pub fn checkpoint(&self) -> &VerifierCheckpoint {
        &self.checkpoint
    }

    /// The shipped operating point: serve when `score >= threshold`.
    pub fn threshold(&self) -> f32 {
        self.checkpoint.threshold
    }

    /// Probability that `cached` asks the same thing as `query` (its answer can be served).
    pub fn score(&self, query: &str, cached: &str, query_emb: &[f32], cached_emb: &[f32]) -> f32 {
        self.verdict(query, cached, query_emb, cached_emb).score
    }

    /// [`Verifier::score`] with the veto reason.
    pub fn verdict(
        &self,
        query: &str,
        cached: &str,
        query_emb: &[f32],
        cached_emb: &[f32],
    ) -> Verdict {
        // Each text is analysed once, for the guards and the features.
        let qa = text::Analysed::new(query);
        let ca = text::Analysed::new(cached);
        if self.checkpoint.lexical_veto {
            if let Some(reason) = text::veto_analysed(&qa, &ca) {
                return Verdict {
                    score: 0.0,
                    veto: Some(reason),
                };
            }
        }
        // Same words once case and punctuation are dropped, and no guard fired (so "C++" vs
        // "C#" is not this case): the same question. Quora's labels teach the model to
        // distrust near-identical pairs; this overrides that.
        let nq = normalise_question(query);
        if !nq.is_empty() && nq == normalise_question(cached) {
            return Verdict {
                score: 1.0,
                veto: None,
            };
        }
        let cos = cosine(query_emb, cached_emb);
        if cos < self.checkpoint.min_cos {
            return Verdict {
                score: 0.0,
                veto: None,
            };
        }
        let states = match (&self.embedder, self.checkpoint.token_alignment) {
            (Some(e), true) => e.embed_with_token_states(&[query, cached]).ok(),
            _ => None,
        };
        if self.checkpoint.token_alignment && states.as_ref().is_none_or(|s| s.len() != 2) {
            // No token vectors: do not guess, do not hit.
            return Verdict {
                score: 0.0,
                veto: None,
            };
        }
        let tokens = states.as_ref().map(|s| TokenPair {
            query: &s[0].tokens,
            cached: &s[1].tokens,
        });
        let x = features_of(
            &qa,
            &ca,
            query,
            cached,
            cos,
            self.checkpoint.token_alignment,
            tokens,
        );
        Verdict {
            score: self.checkpoint.model.predict(&x),
            veto: None,
        }
    }

    /// Scores from precomputed features (training, evals); no veto applied.
    pub fn score_features(&self, features: &[f32]) -> f32 {
        self.checkpoint.model.predict(features)
    }
}

/// The shipped checkpoint directory: `$SWITCHYARD_VERIFIER_DIR`, else
/// `<repo root>/models/verifier/default` found from the working directory upwards.
pub fn default_checkpoint_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_VERIFIER_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for dir in cwd.ancestors() {
        let candidate = dir.join(DEFAULT_CHECKPOINT_SUBDIR);
        if candidate.join(CHECKPOINT_FILE).is_file() {
            return candidate;
        }
    }
    cwd.join(DEFAULT_CHECKPOINT_SUBDIR)
}

/// The semantic cache asks the learned verifier for its second opinion.
impl crate::HitVerifier for Verifier {
    fn score(&self, query: &str, cached: &str, query_embedding: &[f32], cached_embedding: &[f32]) -> f32 {
        Verifier::score(self, query, cached, query_embedding, cached_embedding)
    }

    fn threshold(&self) -> f32 {
        Verifier::threshold(self)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn toy_checkpoint() -> VerifierCheckpoint {
        let d = BASE_FEATURES.len();
        let mut weights = vec![0.0; d];
        weights[0] = 4.0; // cosine only
        VerifierCheckpoint {
            format_version: FORMAT_VERSION,
            features: feature_names(false),
            token_alignment: false,
            lexical_veto: true,
            min_cos: 0.0,
            model: Logistic {
                mean: vec![0.0; d],
                std: vec![1.0; d],
                weights,
                bias: -2.0,
            },
            threshold: 0.5,
            embedder: "test".into(),
            training: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
        }
    }

    #[test]
    fn veto_scores_zero_and_checkpoint_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        toy_checkpoint().write(dir.path()).expect("write");
        let v = Verifier::load(dir.path()).expect("load");
        let e = [1.0f32, 0.0];
        let same = v.verdict("Sort the list ascending", "Sort the list ascending", &e, &e);
        assert!(same.score > 0.8 && same.veto.is_none(), "{same:?}");
        let flipped = v.verdict(
            "Sort the list ascending",
            "Sort the list descending",
            &e,
            &e,
        );
        assert_eq!(flipped.score, 0.0);
        assert_eq!(flipped.veto, Some("opposite direction words"));
        let far = [0.0f32, 1.0];
        assert_eq!(
            v.score("Why is the sky blue?", "why is the sky  blue", &e, &far),
            1.0
        );
        assert_eq!(v.score("Learn C++ first?", "Learn C# first?", &e, &e), 0.0);
        assert!(v.score("Why is the sky blue?", "Why is the sea blue?", &e, &far) < 0.5);
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Verifier>();
    }

    #[test]
    fn load_rejects_a_mismatched_feature_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ck = toy_checkpoint();
        ck.features.pop();
        ck.write(dir.path()).expect("write");
        assert!(matches!(
            Verifier::load(dir.path()),
            Err(VerifierError::Invalid { .. })
        ));
        let mut ck = toy_checkpoint();
        ck.token_alignment = true;
        ck.features = feature_names(true);
        let d = ck.features.len();
        ck.model.weights = vec![0.0; d];
        ck.model.mean = vec![0.0; d];
        ck.model.std = vec![1.0; d];
        ck.write(dir.path()).expect("write");
        assert!(matches!(
            Verifier::load(dir.path()),
            Err(VerifierError::NeedsEmbedder(_))
        ));
    }
}

