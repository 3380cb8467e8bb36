//! `switchyard.toml`: what the gateway serves and where it sends it.
//!
//! Parsed once at start into [`Config`]; the request path only ever sees the resolved
//! [`crate::registry::Registry`], never the TOML. Unknown keys are rejected so that a typo
//! is an error at start, not a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use router_model::policy::{Exploration, ExplorationPolicy, Tradeoff};

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
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[cache]`: exact and semantic response cache.
    #[serde(default)]
    pub cache: cache::CacheConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[judge]`: the model `switchyard judge` asks to rate logged answers.
    #[serde(default)]
    pub judge: JudgeConfig,
    /// `[telemetry]`: OpenTelemetry traces over OTLP.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: where OpenTelemetry traces go (see [`crate::telemetry`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (`http://127.0.0.1:4318`); unset: no traces.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` overrides it.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "switchyard".into() }
    }
}

impl TelemetryConfig {
    /// The exporter's settings, when traces are on.
    pub fn otlp(&self) -> Option<crate::telemetry::OtlpConfig> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()).or_else(|| self.otlp_endpoint.clone())?;
        Some(crate::telemetry::OtlpConfig { endpoint, service_name: self.service_name.clone() })
    }
}

/// `[judge]`: offline labelling of logged answers by a model (LLM-as-a-judge).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// A `[models.NAME]` entry (any provider); unset: `switchyard judge` needs `--model`.
    pub model: Option<String>,
}

/// `[limits]`: requests/min, tokens/min and USD budgets per virtual key (from the key's row)
/// and per tenant (from `[limits.tenants.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `redis://host:port/db`: counters shared by every replica. Unset: in-process counters
    /// (one gateway process). `env::NAME` reads the URL from that env var.
    pub redis_url: Option<String>,
    /// Longest a Redis call may take before the request goes on without it.
    pub redis_timeout_ms: u64,
    /// What to do while Redis cannot be reached: `open` (serve, unlimited; counted in
    /// `switchyard_limit_backend_errors_total` and logged) or `closed` (refuse with 503).
    pub on_backend_error: FailureMode,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// When budgets start again: `month` (calendar month, UTC), `day` (UTC) or `total` (never).
    pub budget_period: BudgetPeriod,
    /// Limits per tenant, shared by all of the tenant's keys.
    pub tenants: BTreeMap<String, TenantLimits>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_timeout_ms: 50,
            on_backend_error: FailureMode::Open,
            key_prefix: "switchyard:limits".into(),
            budget_period: BudgetPeriod::Month,
            tenants: BTreeMap::new(),
        }
    }
}

impl LimitsConfig {
    /// The Redis URL with an `env::NAME` reference resolved.
    pub fn resolved_redis_url(&self) -> Result<Option<String>, Error> {
        self.redis_url.as_deref().map(|url| resolve_env_ref("[limits] redis_url", url)).transpose()
    }
}

/// `[limits.tenants.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    #[default]
    Month,
    Day,
    Total,
}

/// `[database]`: where the outcome log, feedback and virtual keys live, and how rows get there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://FILE` (created if missing), `sqlite::memory:`, or `postgres://…`.
    /// `env::NAME` reads the URL from that env var, so a password never sits in config.
    pub url: String,
    /// Whether the log keeps the prompt text (the last user message). Off by default: prompts
    /// may hold personal data; the embedding and the hash are enough to train on.
    pub store_prompts: bool,
    /// Whether requests are logged at all. Off loses what training and the dashboard learn
    /// from; it exists to measure what the log costs and for deployments that must not keep
    /// a record. Keys and feedback still use the database.
    pub log_requests: bool,
    /// Most rows per batch insert (one `COPY` on Postgres, one transaction on SQLite).
    pub batch_size: usize,
    /// Longest a row waits in a partial batch before it is written. With `batch_size`, this
    /// sets how large batches get under heavy load, which is what an insert costs per row:
    /// each transaction and commit has a fixed cost, and Postgres sets up a buffered tuple
    /// for each of a `COPY`'s first 1,000 rows. A Postgres on the gateway's own two cores at
    /// 36,000 req/s spent 2.7 µs a row with batches of 512, 1.9 at 50 ms (~1,800 rows) and 1.4
    /// at 200 ms (~7,000 rows), for ~12 MB more memory at that load (three batches' rows). A
    /// row still reaches the database within a fraction of a second, and a flush (feedback on
    /// it, shutdown) writes it at once.
    pub batch_interval_ms: u64,
    /// Rows the request path can queue before it diverts rows to the spill file.
    pub channel_capacity: usize,
    /// Append-only JSON-lines file that holds rows while the database is unreachable.
    /// One per gateway process.
    pub spill_path: PathBuf,
    /// How often the writer retries the database while rows wait in the spill file.
    pub retry_interval_ms: u64,
    /// Longest one insert may take before its batch is spilled (and retried later).
    pub write_timeout_ms: u64,
    /// Batch inserts that may run at the same time (Postgres spreads them over cores).
    pub write_concurrency: usize,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://switchyard.db".into(),
            store_prompts: false,
            log_requests: true,
            batch_size: 8192,
            batch_interval_ms: 200,
            channel_capacity: 16_384,
            spill_path: PathBuf::from("switchyard-spill.jsonl"),
            retry_interval_ms: 1_000,
            write_timeout_ms: 5_000,
            write_concurrency: 2,
            max_connections: 8,
        }
    }
}

impl DatabaseConfig {
    /// The URL with an `env::NAME` reference resolved.
    pub fn resolved_url(&self) -> Result<String, Error> {
        resolve_env_ref("[database] url", &self.url)
    }
}

/// A setting's value, where `env::NAME` stands for the value of the env var NAME (so URLs
/// with passwords never sit in the config file).
pub fn resolve_env_ref(setting: &str, value: &str) -> Result<String, Error> {
    match value.strip_prefix("env::") {
        Some(var) => std::env::var(var).map_err(|_| Error::Config(format!("{setting}: env var `{var}` is not set"))),
        None => Ok(value.to_owned()),
    }
}

/// `[auth]`: who may call `/v1/*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `true`: anyone may call (a valid virtual key is still attributed to its tenant).
    /// `false`: a virtual key or the master key is required. Unset: open unless a master key
    /// is configured (`[server] master_key_env`), which keeps the no-config demo open.
    pub open: Option<bool>,
    /// How long a key lookup is trusted; a revoked key stops working within this time.
    pub key_cache_ttl_ms: u64,
    /// How long a key checked earlier keeps working while the database is unreachable.
    pub key_stale_ttl_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            open: None,
            key_cache_ttl_ms: 30_000,
            key_stale_ttl_ms: 600_000,
        }
    }
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
    /// Consecutive upstream failures (5xx, timeouts, connection errors) that open a model's
    /// circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps a model out before one probe request is let through.
    pub breaker_open_ms: u64,
    /// At shutdown, how long in-flight requests and streams may run on; streams still open
    /// after it are cut (their outcome rows are still written before the process exits).
    pub shutdown_grace_ms: u64,
    /// `text` (default) or `json`: one JSON object per line, for log collectors.
    /// `SWITCHYARD_LOG_FORMAT` overrides it.
    pub log_format: LogFormat,
    /// How requests are scheduled onto threads: `per_core` (default) or `shared` (one
    /// work-stealing runtime); see [`ServeRuntime`].
    pub runtime: ServeRuntime,
    /// Serving threads with `runtime = "per_core"` (default: one per CPU).
    pub serving_threads: Option<usize>,
}

/// How requests are scheduled onto threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServeRuntime {
    /// One multi-threaded Tokio runtime: connections, upstream connections and background
    /// work share its worker threads and move between them. For one HTTP/2 connection
    /// carrying everything (it would stay on one thread with `per_core`).
    Shared,
    /// One single-threaded runtime per serving thread, each fed new connections by one
    /// acceptor (to the thread with the fewest open connections) and with its own pool of
    /// upstream connections, so a request is read, proxied and answered on one thread
    /// without waking another: more throughput per core than work stealing, whose
    /// cross-thread wake-ups dominate a proxy's cost. Background work (log writer, cache
    /// refresh, embedder) stays on the shared runtime.
    #[default]
    PerCore,
}

/// How the process writes its logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// `SWITCHYARD_LOG_FORMAT` (`text` or `json`) when set, else `configured`.
    pub fn from_env_or(configured: Self) -> Result<Self, Error> {
        match std::env::var("SWITCHYARD_LOG_FORMAT").ok().filter(|v| !v.is_empty()).as_deref() {
            None => Ok(configured),
            Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(Error::Config(format!("SWITCHYARD_LOG_FORMAT must be `text` or `json`, not `{other}`"))),
        }
    }
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
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
            runtime: ServeRuntime::default(),
            serving_threads: None,
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

    /// Serving threads with their own runtime, or `None` for the shared runtime.
    pub fn per_core_threads(&self) -> Option<usize> {
        match self.runtime {
            ServeRuntime::Shared => None,
            ServeRuntime::PerCore => Some(
                self.serving_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            ),
        }
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
    /// Azure OpenAI: `{base_url}/openai/deployments/{upstream_model}/…?api-version=…` with an
    /// `api-key` header; a model's `upstream_model` is its deployment name.
    Azure,
    /// Google Gemini's native API (`generateContent`), translated to and from the OpenAI shape.
    Gemini,
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
    /// Bulkhead: at most this many requests in flight to this provider (until the body or
    /// stream ends); when full the candidate is skipped like an open breaker. Unset: no cap.
    pub max_concurrent: Option<usize>,
    /// Azure OpenAI's `api-version` query parameter (`kind = "azure"` only).
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A configured provider, or `local` (embedding models only): the in-process embedder
    /// of `[router]`, which needs no provider entry.
    pub provider: String,
    /// `chat` (default) or `embedding` (served on `/v1/embeddings`, never routed).
    #[serde(default)]
    pub kind: ModelKind,
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
    /// Same-model retries after a transient failure (connection error, timeout to the first
    /// byte, 5xx, 429), before anything reached the client; 0 turns them off.
    #[serde(default)]
    pub retries: u32,
    /// First retry waits about this long (ms); each further one doubles it, with jitter.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Longest wait before a retry (ms). A 429 whose Retry-After asks for longer is not
    /// retried on this model: the request moves on to the next one.
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// Models to try, in order, when a request naming this model directly fails (after its
    /// retries). Routes fall back along their own ranking instead.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

/// What a model answers: chat completions, or embeddings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

/// The provider name of the in-process embedder (embedding models only).
pub const LOCAL_PROVIDER: &str = "local";

fn default_retry_backoff_ms() -> u64 {
    100
}

fn default_retry_max_backoff_ms() -> u64 {
    2_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Models this route may send a request to.
    pub candidates: Vec<String>,
    /// Model used when no better choice can be made (no selector, or the selector is late).
    pub default: String,
    /// How the route weighs quality against cost and latency: a preset (`best`, `balanced`,
    /// `cheap`, `fast`) or `quality=1,cost=0.05,latency=0.02`. Callers may override it per
    /// request with the `x-switchyard-tradeoff` header.
    #[serde(default = "default_tradeoff", deserialize_with = "tradeoff_from_text")]
    pub tradeoff: Tradeoff,
    /// Most of the route's requests (0..1) sent to a candidate other than the predicted best,
    /// so training sees outcomes of models the policy would not pick; 0 turns exploration off.
    #[serde(default = "default_exploration")]
    pub exploration: f64,
    /// `softmax` (default): explore in proportion to exp((utility − best) / temperature), so
    /// near ties are tried and clear choices hardly ever; `epsilon_greedy`: spread
    /// `exploration` evenly over the candidates.
    #[serde(default = "default_exploration_policy")]
    pub exploration_policy: ExplorationPolicy,
    /// Softmax temperature in utility units (default 0.05).
    #[serde(default = "default_exploration_temperature")]
    pub exploration_temperature: f64,
    /// An explored request may cost at most this much (USD, predicted) above the best
    /// candidate; dearer candidates are never explored.
    pub exploration_max_extra_cost_usd: Option<f64>,
    /// Predicted-utility advantage (quality points at the route's trade-off) a candidate needs
    /// over the route's `default` to be served instead; below it the selector is unsure and
    /// the default is served (`x-switchyard-decision: unsure`). 0 (default) turns it off.
    #[serde(default)]
    pub min_advantage: f64,
    /// Time to the first byte for this route's upstream calls; unset: `[server]`'s. Lets a
    /// latency-sensitive route fail over sooner than a batch one.
    pub first_byte_timeout_ms: Option<u64>,
    /// Whole-body / between-reads timeout for this route; unset: `[server]`'s.
    pub request_timeout_ms: Option<u64>,
}

fn default_tradeoff() -> Tradeoff {
    Tradeoff::BALANCED
}

/// Parses a route's trade-off once, when the config is read.
fn tradeoff_from_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tradeoff, D::Error> {
    let text = String::deserialize(deserializer)?;
    Tradeoff::parse_override(&text, Tradeoff::BALANCED).map_err(serde::de::Error::custom)
}

fn default_exploration() -> f64 {
    0.05
}

fn default_exploration_policy() -> ExplorationPolicy {
    ExplorationPolicy::Softmax
}

fn default_exploration_temperature() -> f64 {
    router_model::policy::DEFAULT_TEMPERATURE
}

impl RouteConfig {
    /// The route's exploration as the policy takes it.
    pub fn exploration(&self) -> Exploration {
        Exploration {
            policy: self.exploration_policy,
            max_share: self.exploration,
            temperature: self.exploration_temperature,
            max_extra_cost_usd: self.exploration_max_extra_cost_usd,
        }
    }
}

/// `[router]`: the learned selector and the embedder it reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Selector checkpoint directory (`selector.json` + `selector.safetensors`). Missing:
    /// routes use their default model, with a log line saying so.
    pub checkpoint: Option<PathBuf>,
    /// A second checkpoint scored on every routed request and logged, never served.
    pub shadow_checkpoint: Option<PathBuf>,
    /// A candidate checkpoint that decides `challenger_share` of routed requests (default
    /// `<checkpoint>.challenger`, where `switchyard learn` puts a candidate its gate could not
    /// yet decide on). Absent: the active checkpoint decides everything.
    pub challenger_checkpoint: Option<PathBuf>,
    /// Share of routed requests the challenger decides on routes that explore (exploration >
    /// 0), 0..=0.5 (0: challengers are never served). Its picks are then logged with probability ≥ share × its own, so the next
    /// learn run can check a candidate like it without clipping; a worse challenger costs at
    /// most this share of its loss until the next run removes it.
    pub challenger_share: f64,
    /// Makes exploration repeatable: each routed request's random draw (explore or not, which
    /// model, challenger or active) becomes a keyed hash of this seed and the request's last
    /// user message, so the same traffic explores the same way in every run, whatever the
    /// arrival order. For experiments and benchmarks; leave unset in production, where a
    /// repeated question should be free to explore differently each time.
    pub exploration_seed: Option<u64>,
    /// Embedder weights directory; default `SWITCHYARD_EMBEDDER_DIR` or `.cache/models/all-MiniLM-L6-v2`.
    pub embedder_dir: Option<PathBuf>,
    /// Token window of the embedder (the checkpoint must have been trained with the same).
    pub embedder_max_tokens: usize,
    /// Threads for the embedder's matrix work (default: all cores).
    pub embedder_threads: Option<usize>,
    /// Time allowed for embedding and scoring; past it the route's default model is used.
    pub decision_timeout_ms: u64,
    /// How often to check the checkpoint files for a new version (0: only on SIGHUP or
    /// `POST /admin/reload`).
    pub reload_poll_ms: u64,
}

/// Share of routed requests a challenger checkpoint decides when the config sets none.
pub const DEFAULT_CHALLENGER_SHARE: f64 = 0.2;

impl RouterConfig {
    /// Where the challenger checkpoint is read from: the configured path, else
    /// `<checkpoint>.challenger` (where `switchyard learn` writes one).
    pub fn challenger_path(&self) -> Option<PathBuf> {
        self.challenger_checkpoint.clone().or_else(|| {
            let active = self.checkpoint.as_ref()?;
            let name = active.file_name()?.to_string_lossy().into_owned();
            Some(active.with_file_name(format!("{name}.challenger")))
        })
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            checkpoint: Some(PathBuf::from("models/selector/default")),
            shadow_checkpoint: None,
            challenger_checkpoint: None,
            challenger_share: DEFAULT_CHALLENGER_SHARE,
            exploration_seed: None,
            embedder_dir: None,
            embedder_max_tokens: router_model::DEFAULT_MAX_TOKENS,
            embedder_threads: None,
            decision_timeout_ms: 150,
            reload_poll_ms: 2_000,
        }
    }
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
        if self.server.serving_threads.is_some_and(|n| !(1..=256).contains(&n)) {
            return Err(Error::Config("[server] serving_threads must be between 1 and 256".into()));
        }
        if !(0.0..=0.5).contains(&self.router.challenger_share) {
            return Err(Error::Config("[router] challenger_share must be between 0 and 0.5".into()));
        }
        if self.database.batch_size == 0 || self.database.channel_capacity == 0 {
            return Err(Error::Config("[database] batch_size and channel_capacity must be at least 1".into()));
        }
        for (name, provider) in &self.providers {
            if provider.kind != ProviderKind::Mock && provider.base_url.is_none() {
                return Err(Error::Config(format!("provider `{name}` needs a base_url")));
            }
            if (provider.kind == ProviderKind::Azure) != provider.api_version.is_some() {
                return Err(Error::Config(format!("provider `{name}`: api_version is set for kind = \"azure\", and only for it")));
            }
        }
        for (name, model) in &self.models {
            let local = model.provider == LOCAL_PROVIDER && !self.providers.contains_key(LOCAL_PROVIDER);
            if local && model.kind != ModelKind::Embedding {
                return Err(Error::Config(format!(
                    "model `{name}`: provider `local` (the in-process embedder) serves embedding models only; add kind = \"embedding\""
                )));
            }
            if !local && !self.providers.contains_key(&model.provider) {
                return Err(Error::Config(format!(
                    "model `{name}` uses unknown provider `{}`",
                    model.provider
                )));
            }
            if local && model.upstream_model.is_some() {
                return Err(Error::Config(format!(
                    "model `{name}`: the local embedder is set in [router] embedder_dir, not with upstream_model"
                )));
            }
            if model.kind == ModelKind::Embedding
                && self.providers.get(&model.provider).is_some_and(|p| matches!(p.kind, ProviderKind::Anthropic | ProviderKind::Gemini))
            {
                return Err(Error::Config(format!("model `{name}`: embeddings are served by local, openai, azure and mock providers")));
            }
            for fallback in &model.fallbacks {
                if fallback == name || !self.models.contains_key(fallback) {
                    return Err(Error::Config(format!(
                        "model `{name}`: fallback `{fallback}` must be another configured model"
                    )));
                }
                if self.models[fallback].kind != model.kind {
                    return Err(Error::Config(format!(
                        "model `{name}`: fallback `{fallback}` is not the same kind of model (chat / embedding)"
                    )));
                }
            }
            if model.retries > 10 {
                return Err(Error::Config(format!("model `{name}`: retries must be at most 10")));
            }
            if model.retry_max_backoff_ms < model.retry_backoff_ms {
                return Err(Error::Config(format!("model `{name}`: retry_max_backoff_ms is below retry_backoff_ms")));
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
                match self.models.get(candidate) {
                    None => {
                        return Err(Error::Config(format!(
                            "route `{name}` lists unknown model `{candidate}`"
                        )))
                    }
                    Some(model) if model.kind != ModelKind::Chat => {
                        return Err(Error::Config(format!(
                            "route `{name}` lists embedding model `{candidate}`: routes choose between chat models"
                        )))
                    }
                    Some(_) => {}
                }
            }
            if !(0.0..=1.0).contains(&route.exploration) {
                return Err(Error::Config(format!("route `{name}`: exploration must be within 0..1")));
            }
            if !(route.exploration_temperature.is_finite() && route.exploration_temperature > 0.0) {
                return Err(Error::Config(format!("route `{name}`: exploration_temperature must be a positive number")));
            }
            if route.exploration_max_extra_cost_usd.is_some_and(|c| !(c.is_finite() && c >= 0.0)) {
                return Err(Error::Config(format!("route `{name}`: exploration_max_extra_cost_usd must be a non-negative number")));
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

[models."all-MiniLM-L6-v2"]
provider = "local"
kind = "embedding"

[routes.auto]
candidates = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mixtral-8x7b-instruct-v0.1"]
default = "gpt-3.5-turbo-1106"

[cache]
exact = true
semantic = true
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
    fn the_challenger_sits_beside_the_checkpoint_and_its_share_is_bounded() {
        let config = Config::from_toml("[router]\ncheckpoint = \"models/selector/live\"\n").expect("valid");
        assert_eq!(config.router.challenger_path(), Some(PathBuf::from("models/selector/live.challenger")));
        assert_eq!(config.router.challenger_share, DEFAULT_CHALLENGER_SHARE);
        let named = Config::from_toml("[router]\nchallenger_checkpoint = \"/ckpt/c\"\nchallenger_share = 0.0\n").expect("valid");
        assert_eq!(named.router.challenger_path(), Some(PathBuf::from("/ckpt/c")));
        for share in ["0.6", "-0.1"] {
            let err = Config::from_toml(&format!("[router]\nchallenger_share = {share}\n")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("challenger_share"), "{share}: {err}");
        }
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
    fn limits_section_parses_and_rejects_typos() {
        let text = "[limits]\nredis_url = \"redis://127.0.0.1:6379\"\nbudget_period = \"day\"\non_backend_error = \"closed\"\n[limits.tenants.acme]\nrpm = 5\nbudget_usd = 1.5\n";
        let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.limits.budget_period, BudgetPeriod::Day);
        assert_eq!(config.limits.on_backend_error, FailureMode::Closed);
        assert_eq!(config.limits.tenants["acme"].rpm, Some(5));
        assert_eq!(config.limits.redis_timeout_ms, 50);
        assert_eq!(Config::builtin_default().limits.redis_url, None);
        assert_eq!(Config::builtin_default().server.shutdown_grace_ms, 10_000);
        assert!(Config::from_toml("[limits.tenants.acme]\nrps = 5\n").is_err());
        assert!(Config::from_toml("[limits]\nbudget_period = \"week\"\n").is_err());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../switchyard.example.toml");
        let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.limits.tenants["acme"].rpm, Some(600));
    }

    #[test]
    fn openai_provider_needs_base_url() {
        let text = "[providers.p]\nkind = \"openai\"\n";
        assert!(Config::from_toml(text).is_err());
    }
}
