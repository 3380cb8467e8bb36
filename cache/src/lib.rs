//! Response cache for switchyard. This branch holds only the semantic cache's verifier.
pub mod verifier;
