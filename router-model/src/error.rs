//! The crate's single error type.

use std::path::PathBuf;

/// Why the embedding service refused to wait for a request.
///
/// Kept as a separate enum so the gateway can count the two causes apart: a full queue means
/// sustained overload, a missed deadline means a burst or a slow batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverloadReason {
    /// The bounded queue in front of the model thread was full.
    QueueFull,
    /// The request's deadline passed before (or while) it was queued.
    DeadlineExceeded,
}

impl std::fmt::Display for OverloadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OverloadReason::QueueFull => "queue full",
            OverloadReason::DeadlineExceeded => "deadline exceeded",
        })
    }
}

/// Everything that can go wrong in `router-model`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedding service cannot answer in time; the caller should fall back (the gateway
    /// uses the route's default model) rather than wait.
    #[error("embedding service overloaded: {0}")]
    Overloaded(OverloadReason),

    /// The model thread has stopped (it panicked or the service is shutting down).
    #[error("embedding service stopped")]
    ServiceStopped,

    /// The model failed on a batch (the message of the underlying error, which cannot be
    /// cloned to every caller of the batch).
    #[error("embedding model failed: {0}")]
    Model(String),

    /// A model or checkpoint file is missing.
    #[error("{what} not found at {path}: {hint}")]
    NotFound {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },

    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (model config, checkpoint metadata) is malformed.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    /// The tokenizer failed to load or to encode a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A tensor operation failed (shape mismatch, missing weight, ...).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),

    /// A checkpoint does not fit what the caller runs (other embedder, other schema, ...).
    #[error("incompatible checkpoint {path}: {reason}")]
    IncompatibleCheckpoint { path: PathBuf, reason: String },

    /// The caller passed something unusable (wrong vector length, empty candidate list, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A trade-off the policy cannot read (the message says what to write instead).
    #[error("{0}")]
    Policy(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// True for the errors after which the caller should fall back instead of retrying.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Overloaded(_))
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
