//! The learned part of routing, shared by serving (gateway), training and evals.
//!
//! - [`embedder`]: text → 384-d unit vector (all-MiniLM-L6-v2 on candle, parity with
//!   sentence-transformers).
//! - [`service`]: the embedder behind a dedicated model thread, a bounded queue, batching,
//!   deadlines and an LRU of recent embeddings — what the gateway calls per request.
//! - [`features`]: cheap request features beside the embedding.
//! - [`selector`]: a small network predicting, per candidate model, answer quality, latency
//!   and output tokens from the embedding plus those features.
//! - [`checkpoint`]: the on-disk contract between training, serving and evals.
//! - [`outcome`]: the outcome-log row the gateway writes and training reads.
//! - [`policy`]: predictions + the caller's trade-off → a choice (shared by serving and evals).
//! - [`runtime`]: [`configure_cpu_threads`], to call first thing in a serving `main`.

mod bert;
pub mod checkpoint;
pub mod embedder;
pub mod error;
pub mod features;
pub mod model_id;
pub mod outcome;
pub mod policy;
pub mod runtime;
pub mod selector;
pub mod service;

pub use checkpoint::{
    resolve_candidate, Checkpoint, CheckpointMeta, EmbedderRef, Prediction, ResolvedCandidate,
};
pub use embedder::{
    cosine, default_model_dir, BertEmbedder, Embedder, EmbedderOptions, ModelFiles, ModelSource,
    TokenStates, Tokens, DEFAULT_MAX_TOKENS, DEFAULT_MODEL_NAME,
};
pub use error::{Error, OverloadReason, Result};
pub use features::{ChatTurn, RequestFeatures};
pub use model_id::canonical_model_id;
pub use runtime::configure_cpu_threads;
pub use selector::{
    Architecture, FeatureNorm, FrozenSelector, LossWeights, Selector, SelectorOutput, Targets,
};
pub use service::{Embedding, EmbeddingService, ServiceConfig, ServiceStats};
