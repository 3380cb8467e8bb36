//! The one error type of the evals crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] router_model::Error),

    #[error(transparent)]
    Training(#[from] training::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A bad line of an input file, named by its 1-based number.
    #[error("{path}, line {line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },

    #[error("{0}")]
    InvalidInput(String),

    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },

    #[error("replay: {0}")]
    Replay(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
