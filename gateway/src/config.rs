//! `switchyard.toml`: what the gateway serves and where it sends it.
//!
//! Parsed once at start into [`Config`]; the request path only ever sees the resolved
//! [`crate::registry::Registry`], never the TOML. Unknown keys are rejected so that a typo
//! is an error at start, not a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; `--listen` overrides it.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// TCP connect timeout to an upstream.
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream sends its response headers (first token for streams).
    pub first_byte_timeout_ms: u64,
    /// Time allowed for a whole non-streaming upstream call, or between two chunks of a stream.
    pub request_timeout_ms: u64,
    /// Name of an env var holding a master key. When the variable is set, every `/v1/*`
    /// request must present it as `Authorization: Bearer …`; when unset, access is open.
    pub master_key_env: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 60_000,
            request_timeout_ms: 600_000,
            master_key_env: None,
        }
    }
}

impl ServerConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat completions API (OpenAI, vLLM, Ollama, Groq, Together…).
    Openai,
    /// Anthropic Messages API, translated to and from the OpenAI shape.
    Anthropic,
    /// The built-in mock upstream, started in-process on a loopback port.
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Base URL including the version prefix, e.g. `https://api.openai.com/v1`.
    /// Not needed for `mock`.
    pub base_url: Option<String>,
    /// Name of the env var that holds the API key. The key itself never appears in config.
    pub api_key_env: Option<String>,
    /// Extra headers sent with every upstream request (not secrets: use `api_key_env`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Upstream latency of the in-process mock (only for `kind = "mock"`).
    #[serde(default)]
    pub mock_first_token_ms: u64,
    #[serde(default)]
    pub mock_per_token_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: String,
    /// Model name sent upstream; defaults to the model's own name.
    pub upstream_model: Option<String>,
    /// USD per million prompt tokens.
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// USD per million completion tokens.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// A model the router already knows whose learned profile this one borrows until it has
    /// data of its own.
    pub like: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Models this route may send a request to.
    pub candidates: Vec<String>,
    /// Model used when no better choice can be made (no selector, or the selector is late).
    pub default: String,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let config: Config =
            toml::from_str(text).map_err(|e| Error::Config(format!("invalid config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration used when no file is given: one in-process mock provider, a few
    /// models priced like real ones, and an `auto` route across them. Needs no keys.
    pub fn builtin_default() -> Self {
        // The literal is part of the binary and covered by a unit test.
        #[allow(clippy::expect_used)]
        Self::from_toml(BUILTIN_DEFAULT).expect("built-in config is valid")
    }

    fn validate(&self) -> Result<(), Error> {
        for (name, provider) in &self.providers {
            if provider.kind != ProviderKind::Mock && provider.base_url.is_none() {
                return Err(Error::Config(format!("provider `{name}` needs a base_url")));
            }
        }
        for (name, model) in &self.models {
            if !self.providers.contains_key(&model.provider) {
                return Err(Error::Config(format!(
                    "model `{name}` uses unknown provider `{}`",
                    model.provider
                )));
            }
        }
        for (name, route) in &self.routes {
            if self.models.contains_key(name) {
                return Err(Error::Config(format!("`{name}` is both a model and a route")));
            }
            if route.candidates.is_empty() {
                return Err(Error::Config(format!("route `{name}` has no candidates")));
            }
            for candidate in &route.candidates {
                if !self.models.contains_key(candidate) {
                    return Err(Error::Config(format!(
                        "route `{name}` lists unknown model `{candidate}`"
                    )));
                }
            }
            if !route.candidates.contains(&route.default) {
                return Err(Error::Config(format!(
                    "route `{name}`: default `{}` is not one of its candidates",
                    route.default
                )));
            }
        }
        Ok(())
    }
}

/// Built-in demo configuration (see [`Config::builtin_default`]).
pub const BUILTIN_DEFAULT: &str = r#"
[providers.mock]
kind = "mock"

[models."gpt-4-1106-preview"]
provider = "mock"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[models."gpt-3.5-turbo-1106"]
provider = "mock"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[models."mixtral-8x7b-instruct-v0.1"]
provider = "mock"
upstream_model = "mistralai/mixtral-8x7b-chat"
input_usd_per_mtok = 0.6
output_usd_per_mtok = 0.6

[routes.auto]
candidates = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mixtral-8x7b-instruct-v0.1"]
default = "gpt-3.5-turbo-1106"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_is_valid() {
        let config = Config::builtin_default();
        assert_eq!(config.routes["auto"].default, "gpt-3.5-turbo-1106");
        assert_eq!(config.providers["mock"].kind, ProviderKind::Mock);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn route_with_unknown_candidate_is_rejected() {
        let text = r#"
[providers.p]
kind = "mock"
[models.a]
provider = "p"
[routes.r]
candidates = ["a", "b"]
default = "a"
"#;
        assert!(Config::from_toml(text).is_err());
    }

    #[test]
    fn openai_provider_needs_base_url() {
        let text = "[providers.p]\nkind = \"openai\"\n";
        assert!(Config::from_toml(text).is_err());
    }
}
