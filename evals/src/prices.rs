//! Model list prices. The checkpoint predicts output tokens, not dollars: a price per token
//! is what turns a prediction into a cost, on the request path (the gateway config's
//! `[models.NAME]` prices) and here alike.

use std::collections::BTreeMap;
use std::path::Path;

use router_model::policy::Price;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The shipped table (`evals/prices.toml`): the datasets' models at their December 2023 prices.
pub const DEFAULT_PRICES: &str = include_str!("../prices.toml");

/// Canonical model id → price.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable(pub BTreeMap<String, Price>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    models: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn parse(text: &str) -> Result<Self> {
        let file: PriceFile = toml::from_str(text).map_err(|e| Error::InvalidInput(format!("price table: {e}")))?;
        Ok(Self(file.models))
    }

    pub fn builtin() -> Result<Self> {
        Self::parse(DEFAULT_PRICES)
    }

    /// `path`, or the shipped table when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Self::parse(&text)
            }
            None => Self::builtin(),
        }
    }

    pub fn get(&self, model: &str) -> Option<Price> {
        self.0.get(model).copied()
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_and_prices_the_default_pair() {
        let table = PriceTable::builtin().expect("shipped table parses");
        let strong = table.get("gpt-4-1106-preview").expect("gpt-4 priced");
        let weak = table.get("mixtral-8x7b-instruct-v0.1").expect("mixtral priced");
        assert!(strong.cost_usd(1000, 1000) > 10.0 * weak.cost_usd(1000, 1000));
        assert!(PriceTable::parse("[models.x]\ninput_usd_per_mtok = 1.0\n").is_err());
    }
}
