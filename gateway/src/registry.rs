//! The resolved form of the config: model and route names mapped to ready provider clients.
//! Built once at start, so the request path does a map lookup and nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, ModelKind, ProviderKind, LOCAL_PROVIDER};
use crate::error::Error;
use crate::providers::anthropic::AnthropicProvider;
use crate::providers::gemini::GeminiProvider;
use crate::providers::openai::OpenAiProvider;
use crate::providers::Provider;
use router_model::policy::{Exploration, Price, Tradeoff};

/// A model the gateway can send requests to.
pub struct ModelEntry {
    /// The name clients use.
    pub name: String,
    pub provider_name: String,
    pub provider: Arc<Provider>,
    /// The provider's bulkhead (`max_concurrent`), shared by all its models.
    pub bulkhead: Option<Arc<tokio::sync::Semaphore>>,
    pub upstream_model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// A model the selector knows whose predictions this one borrows.
    pub like: Option<String>,
    /// Same-model retries after transient failures.
    pub retry: RetryPolicy,
    /// Chat or embedding: each endpoint serves only its own kind.
    pub kind: ModelKind,
    /// `name` as the `x-switchyard-model` header's value, built once (`None`: not a valid
    /// header value).
    pub name_header: Option<http::HeaderValue>,
}

/// How often and how patiently one model is retried before the request moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
}

impl RetryPolicy {
    pub const NONE: Self = Self {
        retries: 0,
        backoff: std::time::Duration::ZERO,
        max_backoff: std::time::Duration::ZERO,
    };

    /// The wait before retry number `retry` (1-based): the exponential step, halved and
    /// topped up by a random share of the other half, so that clients that failed together
    /// do not retry together. `jitter` is a draw in 0..1.
    pub fn backoff(&self, retry: u32, jitter: f64) -> std::time::Duration {
        let step = self
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

impl ModelEntry {
    pub fn price(&self) -> Price {
        Price {
            input_usd_per_mtok: self.input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
        }
    }

    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.price().cost_usd(prompt_tokens, completion_tokens)
    }
}

pub struct RouteEntry {
    pub name: String,
    pub candidates: Vec<Arc<ModelEntry>>,
    pub default: Arc<ModelEntry>,
    pub tradeoff: Tradeoff,
    /// How the route explores (share, policy, temperature, extra-cost budget).
    pub exploration: Exploration,
    /// Advantage over the default below which the default is served (0: off).
    pub min_advantage: f64,
    /// Per-route overrides of the server's upstream timeouts.
    pub first_byte_timeout: Option<std::time::Duration>,
    pub request_timeout: Option<std::time::Duration>,
    /// `name` as the `x-switchyard-route` header's value, built once.
    pub name_header: Option<http::HeaderValue>,
}

/// What a client's `"model"` resolves to.
pub enum Target {
    Model(Arc<ModelEntry>),
    Route(Arc<RouteEntry>),
}

pub struct Registry {
    pub models: HashMap<String, Arc<ModelEntry>>,
    /// `fallbacks` of each model that has some, resolved.
    pub fallbacks: HashMap<String, Vec<Arc<ModelEntry>>>,
    pub routes: HashMap<String, Arc<RouteEntry>>,
}

impl Registry {
    /// Builds provider clients. `mock_addr` is where the in-process mock upstream listens,
    /// needed when a provider has `kind = "mock"`.
    pub fn build(config: &Config, mock_addr: Option<SocketAddr>) -> Result<Self, Error> {
        let mut providers: HashMap<String, Arc<Provider>> = HashMap::new();
        let mut bulkheads: HashMap<String, Arc<tokio::sync::Semaphore>> = HashMap::new();
        for (name, provider) in &config.providers {
            let api_key = match &provider.api_key_env {
                Some(var) => match std::env::var(var) {
                    Ok(key) if !key.is_empty() => Some(key),
                    _ => {
                        tracing::warn!(provider = %name, env = %var, "API key env var is not set; requests to this provider go without a key");
                        None
                    }
                },
                None => None,
            };
            let mut headers = HeaderMap::new();
            for (key, value) in &provider.headers {
                let key = HeaderName::from_bytes(key.as_bytes())
                    .map_err(|_| Error::Config(format!("provider `{name}`: invalid header name `{key}`")))?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| Error::Config(format!("provider `{name}`: invalid header value")))?;
                headers.insert(key, value);
            }
            let client = match provider.kind {
                ProviderKind::Openai => {
                    let base_url = provider.base_url.as_deref().unwrap_or_default();
                    Provider::OpenAi(OpenAiProvider::new(base_url, api_key.as_deref(), headers, false)?)
                }
                ProviderKind::Mock => {
                    let base_url = match (&provider.base_url, mock_addr) {
                        (Some(url), _) => url.clone(),
                        (None, Some(addr)) => format!("http://{addr}/v1"),
                        (None, None) => {
                            return Err(Error::Config(format!("provider `{name}`: mock upstream is not running")))
                        }
                    };
                    Provider::OpenAi(OpenAiProvider::new(&base_url, api_key.as_deref(), headers, true)?)
                }
                ProviderKind::Azure => {
                    let base_url = provider.base_url.as_deref().unwrap_or_default();
                    let version = provider.api_version.as_deref().unwrap_or_default();
                    Provider::OpenAi(OpenAiProvider::azure(base_url, version, api_key.as_deref(), headers)?)
                }
                ProviderKind::Gemini => {
                    let base_url = provider.base_url.as_deref().unwrap_or_default();
                    Provider::Gemini(GeminiProvider::new(base_url, api_key.as_deref(), headers)?)
                }
                ProviderKind::Anthropic => {
                    let base_url = provider.base_url.as_deref().unwrap_or_default();
                    Provider::Anthropic(AnthropicProvider::new(base_url, api_key.as_deref(), headers)?)
                }
            };
            providers.insert(name.clone(), Arc::new(client));
            if let Some(n) = provider.max_concurrent {
                bulkheads.insert(name.clone(), Arc::new(tokio::sync::Semaphore::new(n)));
            }
        }

        let mut models = HashMap::new();
        let local = Arc::new(Provider::Local);
        for (name, model) in &config.models {
            let provider = match providers.get(&model.provider) {
                Some(provider) => provider.clone(),
                None if model.provider == LOCAL_PROVIDER => local.clone(),
                None => return Err(Error::Config(format!("model `{name}`: unknown provider"))),
            };
            models.insert(
                name.clone(),
                Arc::new(ModelEntry {
                    name: name.clone(),
                    provider_name: model.provider.clone(),
                    provider,
                    bulkhead: bulkheads.get(&model.provider).cloned(),
                    upstream_model: model.upstream_model.clone().unwrap_or_else(|| name.clone()),
                    input_usd_per_mtok: model.input_usd_per_mtok,
                    output_usd_per_mtok: model.output_usd_per_mtok,
                    like: model.like.clone(),
                    retry: RetryPolicy {
                        retries: model.retries,
                        backoff: std::time::Duration::from_millis(model.retry_backoff_ms),
                        max_backoff: std::time::Duration::from_millis(model.retry_max_backoff_ms),
                    },
                    kind: model.kind,
                    name_header: http::HeaderValue::from_str(name).ok(),
                }),
            );
        }
        let mut fallbacks = HashMap::new();
        for (name, model) in &config.models {
            if model.fallbacks.is_empty() {
                continue;
            }
            let resolved = model
                .fallbacks
                .iter()
                .map(|f| models.get(f).cloned().ok_or_else(|| Error::Config(format!("model `{name}`: unknown fallback `{f}`"))))
                .collect::<Result<Vec<_>, _>>()?;
            fallbacks.insert(name.clone(), resolved);
        }

        let mut routes = HashMap::new();
        for (name, route) in &config.routes {
            let lookup = |model: &String| {
                models
                    .get(model)
                    .cloned()
                    .ok_or_else(|| Error::Config(format!("route `{name}`: unknown model `{model}`")))
            };
            let candidates = route.candidates.iter().map(lookup).collect::<Result<Vec<_>, _>>()?;
            let default = lookup(&route.default)?;
            routes.insert(
                name.clone(),
                Arc::new(RouteEntry {
                    name: name.clone(),
                    candidates,
                    default,
                    tradeoff: route.tradeoff,
                    exploration: route.exploration(),
                    min_advantage: route.min_advantage,
                    first_byte_timeout: route.first_byte_timeout_ms.map(std::time::Duration::from_millis),
                    request_timeout: route.request_timeout_ms.map(std::time::Duration::from_millis),
                    name_header: http::HeaderValue::from_str(name).ok(),
                }),
            );
        }
        Ok(Self { models, fallbacks, routes })
    }

    /// A directly named model's fallbacks, in order (none unless configured).
    pub fn fallbacks_of(&self, model: &str) -> &[Arc<ModelEntry>] {
        self.fallbacks.get(model).map_or(&[], Vec::as_slice)
    }

    /// A chat model or route by the name a client sent.
    pub fn resolve(&self, name: &str) -> Result<Target, Error> {
        if let Some(model) = self.models.get(name) {
            if model.kind != ModelKind::Chat {
                return Err(Error::invalid_param(
                    "model",
                    format!("`{name}` is an embedding model; send it to /v1/embeddings"),
                ));
            }
            return Ok(Target::Model(model.clone()));
        }
        if let Some(route) = self.routes.get(name) {
            return Ok(Target::Route(route.clone()));
        }
        Err(Error::UnknownModel(name.to_owned()))
    }

    /// An embedding model by the name a client sent.
    pub fn resolve_embedding(&self, name: &str) -> Result<Arc<ModelEntry>, Error> {
        match self.models.get(name) {
            Some(model) if model.kind == ModelKind::Embedding => Ok(model.clone()),
            Some(_) => Err(Error::invalid_param("model", format!("`{name}` is a chat model, not an embedding model"))),
            None if self.routes.contains_key(name) => {
                Err(Error::invalid_param("model", format!("`{name}` is a chat route, not an embedding model")))
            }
            None => Err(Error::UnknownModel(name.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let policy = RetryPolicy { retries: 5, backoff: Duration::from_millis(100), max_backoff: Duration::from_millis(300) };
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, 0.5), Duration::from_millis(150));
        // 400 ms capped at 300 ms.
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(300));
        assert_eq!(policy.backoff(30, 1.0), Duration::from_millis(300));
    }
}
