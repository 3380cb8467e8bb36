//! The routing policy is defined once, in `router_model::policy`, so that offline evaluation
//! (`switchyard eval`) runs the very code that serves; this module only maps its errors.

pub use router_model::policy::{
    choose, choose_with_challenger, prefer_default_when_unsure, score, Candidate, Choice, Exploration, ExplorationPolicy, Price, Scored, Tradeoff,
};

use crate::error::Error;

/// [`Tradeoff::parse_override`] with the gateway's error (a 400 naming the header).
pub fn parse_tradeoff(text: &str, base: Tradeoff) -> Result<Tradeoff, Error> {
    Tradeoff::parse_override(text, base).map_err(|e| Error::invalid(e.to_string()))
}
