//! switchyard's response cache, looked at before anything else on the request path.
//!
//! Two tiers, one scope discipline:
//! - **exact**: blake3 over the tenant and every answer-changing field of the request
//!   ([`key::exact_key`]); a hit skips embedding, routing and the upstream.
//! - **semantic**: the embedding the router computes anyway, searched among the entries of the
//!   same scope ([`key::semantic_scope`]: tenant, model/route, parameters, conversation before
//!   the last user message). A neighbour above a loose cosine threshold is only a candidate:
//!   a [`HitVerifier`] must also agree that the cached question asks the same thing, because
//!   plain cosine scores "sort ascending" and "sort descending" as near-identical.
//!
//! The cache holds answers in memory; the gateway persists entries to its database and loads
//! them back at start ([`ResponseCache::restore`]).

pub mod answer;
pub mod calibration;
pub mod key;
pub mod semantic;
pub mod verifier;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use answer::CachedAnswer;
pub use key::{exact_key, semantic_scope, Digest, RequestParts};
use semantic::{SemanticEntry, SemanticIndex};

/// Errors of the cache crate.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache configuration: {0}")]
    Config(String),
    #[error("verifier: {0}")]
    Verifier(String),
}

/// `[cache]` in switchyard.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Exact-match tier. Off unless configured (the built-in demo turns it on): serving a
    /// stored answer is a choice the operator makes.
    pub exact: bool,
    /// Semantic tier (needs the embedder and a verifier, see `require_verifier`).
    pub semantic: bool,
    /// Entry lifetime.
    pub ttl_secs: u64,
    /// Memory for cached answers in the exact tier, in MiB.
    pub max_memory_mib: u64,
    /// Entries in the semantic tier, over all scopes.
    pub max_semantic_entries: usize,
    /// Entries in one scope (one tenant's one conversation prefix on one model).
    pub max_entries_per_scope: usize,
    /// Loose cosine threshold that makes a neighbour a candidate for the verifier.
    pub min_cosine: f32,
    /// Overrides the verifier's shipped operating point (higher = fewer, safer hits).
    pub verifier_threshold: Option<f32>,
    /// Without a verifier, semantic hits are off unless this is false (then the cosine
    /// threshold alone decides; not recommended).
    pub require_verifier: bool,
    /// Directory of the verifier checkpoint.
    pub verifier: Option<std::path::PathBuf>,
    /// Requests with a higher temperature ask for variety and are neither served nor stored.
    /// An absent temperature is OpenAI's default, 1.
    pub max_temperature: f64,
    /// Whether conversations containing tool results may be cached.
    pub cache_tool_results: bool,
    /// Keep entries in the database so a restart is warm.
    pub persist: bool,
    /// How often (ms) entries other replicas wrote to the database are loaded into this
    /// replica's memory, so a semantic hit on one replica is a hit on all; 0 = only at start.
    pub refresh_ms: u64,
    /// `redis://…` (or `env::NAME`): an exact-match tier shared by every replica, asked when
    /// the in-process tier misses.
    pub redis_url: Option<String>,
    /// Longest a Redis lookup may take before the request goes on without it.
    pub redis_timeout_ms: u64,
    /// Prefix of the shared tier's Redis keys.
    pub redis_prefix: String,
    /// Also look up requests that name a model directly (not a route) semantically. Off by
    /// default: it embeds every such request, which routes do anyway but passthrough does not.
    pub semantic_direct_models: bool,
    /// Tolerated share of semantic hits that serve a wrong answer; when set, the verifier's
    /// threshold is calibrated online to keep it ([`calibration`]). Also per route / tenant.
    pub max_wrong_hit_rate: Option<f64>,
    /// With a bound set, the share of would-be semantic hits answered by the upstream instead
    /// and compared with the cached answer, so the threshold keeps following the traffic.
    pub audit_share: f64,
    /// A configured model that judges whether an audited candidate's cached answer says what
    /// the upstream's fresh answer says, when their words differ (words alone call every
    /// verbose answer different). Unset: answers are compared by their words only.
    pub audit_judge: Option<String>,
    /// Per route or model: `[cache.routes.NAME]`.
    pub routes: std::collections::BTreeMap<String, ScopeOverride>,
    /// Per tenant: `[cache.tenants.NAME]` (wins over the route's setting).
    pub tenants: std::collections::BTreeMap<String, ScopeOverride>,
}

/// Per-route or per-tenant cache settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeOverride {
    pub enabled: Option<bool>,
    pub semantic: Option<bool>,
    pub min_cosine: Option<f32>,
    pub verifier_threshold: Option<f32>,
    pub ttl_secs: Option<u64>,
    pub max_wrong_hit_rate: Option<f64>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            exact: false,
            semantic: false,
            ttl_secs: 24 * 3600,
            max_memory_mib: 256,
            max_semantic_entries: 200_000,
            max_entries_per_scope: 100_000,
            min_cosine: 0.80,
            verifier_threshold: None,
            require_verifier: true,
            verifier: None,
            max_temperature: 1.0,
            cache_tool_results: false,
            persist: true,
            refresh_ms: 5_000,
            redis_url: None,
            redis_timeout_ms: 50,
            redis_prefix: "switchyard".into(),
            semantic_direct_models: false,
            max_wrong_hit_rate: None,
            audit_share: 0.05,
            audit_judge: None,
            routes: Default::default(),
            tenants: Default::default(),
        }
    }
}

/// The settings that apply to one request, after route and tenant overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    pub semantic: bool,
    pub min_cosine: f32,
    pub verifier_threshold: Option<f32>,
    pub ttl: Duration,
}

impl CacheConfig {
    pub fn settings(&self, model_or_route: &str, tenant: Option<&str>) -> Settings {
        let mut settings = Settings {
            enabled: self.exact || self.semantic,
            semantic: self.semantic,
            min_cosine: self.min_cosine,
            verifier_threshold: self.verifier_threshold,
            ttl: Duration::from_secs(self.ttl_secs),
        };
        let overrides = [self.routes.get(model_or_route), tenant.and_then(|t| self.tenants.get(t))];
        for o in overrides.into_iter().flatten() {
            settings.enabled = o.enabled.unwrap_or(settings.enabled);
            settings.semantic = o.semantic.unwrap_or(settings.semantic);
            settings.min_cosine = o.min_cosine.unwrap_or(settings.min_cosine);
            settings.verifier_threshold = o.verifier_threshold.or(settings.verifier_threshold);
            settings.ttl = o.ttl_secs.map(Duration::from_secs).unwrap_or(settings.ttl);
        }
        settings
    }

    pub fn validate(&self) -> Result<(), CacheError> {
        let in_range = |v: f32| (-1.0..=1.0).contains(&v);
        let thresholds = std::iter::once((self.min_cosine, "min_cosine"))
            .chain(self.routes.values().chain(self.tenants.values()).filter_map(|o| o.min_cosine.map(|c| (c, "min_cosine"))));
        for (value, name) in thresholds {
            if !in_range(value) {
                return Err(CacheError::Config(format!("{name} must be in -1..=1, got {value}")));
            }
        }
        if self.ttl_secs == 0 {
            return Err(CacheError::Config("ttl_secs must be positive".into()));
        }
        let bounds = std::iter::once(self.max_wrong_hit_rate)
            .chain(self.routes.values().chain(self.tenants.values()).map(|o| o.max_wrong_hit_rate))
            .flatten();
        for bound in bounds {
            if !(bound > 0.0 && bound < 1.0) {
                return Err(CacheError::Config(format!("max_wrong_hit_rate must be between 0 and 1 (exclusive), got {bound}")));
            }
        }
        if !(0.0..=1.0).contains(&self.audit_share) {
            return Err(CacheError::Config(format!("audit_share must be in 0..=1, got {}", self.audit_share)));
        }
        Ok(())
    }

    /// The wrong-hit bound that applies to a request and where it was set (`tenant:NAME`,
    /// `route:NAME` or `all`), the tenant's winning over the route's.
    pub fn wrong_hit_bound(&self, model_or_route: &str, tenant: Option<&str>) -> Option<(String, f64)> {
        if let Some((name, bound)) = tenant.and_then(|t| Some((t, self.tenants.get(t)?.max_wrong_hit_rate?))) {
            return Some((format!("tenant:{name}"), bound));
        }
        if let Some(bound) = self.routes.get(model_or_route).and_then(|o| o.max_wrong_hit_rate) {
            return Some((format!("route:{model_or_route}"), bound));
        }
        self.max_wrong_hit_rate.map(|bound| ("all".to_owned(), bound))
    }
}

/// Whether a request may be served from and stored in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligibility {
    /// Look the request up.
    pub read: bool,
    /// Store its answer.
    pub write: bool,
    /// Also in the semantic tier (needs a last user message with text only).
    pub semantic: bool,
    /// Why not, for the `x-switchyard-cache` header and the log.
    pub skip_reason: Option<&'static str>,
}

impl Eligibility {
    fn none(reason: &'static str) -> Self {
        Self { read: false, write: false, semantic: false, skip_reason: Some(reason) }
    }
}

/// Decides eligibility from the request and its `Cache-Control` header (`no-store`: neither
/// read nor write; `no-cache`: fetch a fresh answer, then store it).
pub fn eligibility(config: &CacheConfig, settings: &Settings, parts: &RequestParts<'_>, cache_control: Option<&str>) -> Eligibility {
    if !settings.enabled {
        return Eligibility::none("disabled");
    }
    let directives = cache_control.unwrap_or("").to_ascii_lowercase();
    let has = |d: &str| directives.split(',').any(|x| x.trim() == d);
    if has("no-store") {
        return Eligibility::none("no-store");
    }
    if parts.temperature() > config.max_temperature {
        return Eligibility::none("temperature");
    }
    if !config.cache_tool_results && parts.has_tool_results() {
        return Eligibility::none("tool_results");
    }
    let read = !has("no-cache");
    let semantic = settings.semantic && last_user_is_plain_text(parts);
    Eligibility { read, write: true, semantic, skip_reason: (!read).then_some("no-cache") }
}

fn last_user_is_plain_text(parts: &RequestParts<'_>) -> bool {
    let Some(i) = parts.last_user_index() else { return false };
    let Some(message) = parts.messages.and_then(|m| m.as_array()).and_then(|m| m.get(i)) else {
        return false;
    };
    match message.get("content") {
        Some(serde_json::Value::String(text)) => !text.trim().is_empty(),
        Some(serde_json::Value::Array(items)) => {
            !items.is_empty() && items.iter().all(|p| p.get("type").and_then(|t| t.as_str()) == Some("text"))
        }
        _ => false,
    }
}

/// The second opinion on a semantic candidate: does the cached question ask what the new
/// one asks? Implemented by the learned verifier; scores in 0..1.
pub trait HitVerifier: Send + Sync {
    fn score(&self, query: &str, cached: &str, query_embedding: &[f32], cached_embedding: &[f32]) -> f32;
    /// The shipped operating point.
    fn threshold(&self) -> f32;
}

/// A semantic hit.
#[derive(Debug, Clone)]
pub struct SemanticHit {
    pub answer: Arc<CachedAnswer>,
    pub cosine: f32,
    /// The verifier's score, when one ran.
    pub verifier_score: Option<f32>,
    /// The cached question.
    pub cached_query: String,
}

/// Why a semantic lookup found nothing (for metrics and the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemanticMiss {
    /// Nothing in scope above the cosine threshold.
    NoNeighbour,
    /// A neighbour was found but the verifier refused it.
    Rejected,
    /// No verifier loaded and one is required.
    NoVerifier,
}

/// One entry as persisted (the gateway's database row).
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub exact_key: Digest,
    pub scope: Option<Digest>,
    pub query: Option<String>,
    pub embedding: Option<Vec<f32>>,
    pub answer: CachedAnswer,
    pub expires_at_ms: u64,
}

#[derive(Clone)]
struct ExactEntry {
    answer: Arc<CachedAnswer>,
    expires_at_ms: u64,
}

/// Exact and semantic tiers.
pub struct ResponseCache {
    config: CacheConfig,
    exact: moka::sync::Cache<Digest, ExactEntry>,
    semantic: SemanticIndex,
    verifier: Option<Arc<dyn HitVerifier>>,
}

impl ResponseCache {
    pub fn new(config: CacheConfig, embedding_dim: usize, verifier: Option<Arc<dyn HitVerifier>>) -> Result<Self, CacheError> {
        config.validate()?;
        let exact = moka::sync::Cache::builder()
            .max_capacity(config.max_memory_mib.saturating_mul(1024 * 1024))
            .weigher(|_key: &Digest, entry: &ExactEntry| u32::try_from(entry.answer.weight() + 64).unwrap_or(u32::MAX))
            .time_to_live(Duration::from_secs(config.ttl_secs))
            .build();
        let semantic = SemanticIndex::new(embedding_dim, config.max_semantic_entries, config.max_entries_per_scope);
        Ok(Self { config, exact, semantic, verifier })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub fn verifier(&self) -> Option<&Arc<dyn HitVerifier>> {
        self.verifier.as_ref()
    }

    /// Whether semantic hits can be served at all.
    pub fn semantic_enabled(&self) -> bool {
        self.config.semantic && (self.verifier.is_some() || !self.config.require_verifier)
    }

    pub fn lookup_exact(&self, key: &Digest, now_ms: u64) -> Option<Arc<CachedAnswer>> {
        let entry = self.exact.get(key)?;
        if entry.expires_at_ms <= now_ms {
            self.exact.invalidate(key);
            return None;
        }
        Some(entry.answer)
    }

    /// Nearest neighbour in scope, then the verifier.
    pub fn lookup_semantic(
        &self,
        scope: &Digest,
        embedding: &[f32],
        query: &str,
        settings: &Settings,
        now_ms: u64,
    ) -> Result<SemanticHit, SemanticMiss> {
        if !self.config.require_verifier && self.verifier.is_none() {
            let n = self.semantic.nearest(scope, embedding, settings.min_cosine, now_ms).ok_or(SemanticMiss::NoNeighbour)?;
            return Ok(SemanticHit { answer: n.entry.answer.clone(), cosine: n.cosine, verifier_score: None, cached_query: n.entry.query.clone() });
        }
        let verifier = self.verifier.as_ref().ok_or(SemanticMiss::NoVerifier)?;
        let neighbour = self.semantic.nearest(scope, embedding, settings.min_cosine, now_ms).ok_or(SemanticMiss::NoNeighbour)?;
        let score = verifier.score(query, &neighbour.entry.query, embedding, &neighbour.embedding);
        let threshold = settings.verifier_threshold.unwrap_or_else(|| verifier.threshold());
        if score.is_finite() && score >= threshold {
            Ok(SemanticHit {
                answer: neighbour.entry.answer.clone(),
                cosine: neighbour.cosine,
                verifier_score: Some(score),
                cached_query: neighbour.entry.query.clone(),
            })
        } else {
            Err(SemanticMiss::Rejected)
        }
    }

    /// Stores an answer in the exact tier and, with a scope and embedding, the semantic tier.
    pub fn insert(&self, entry: &StoredEntry, now_ms: u64) {
        if entry.expires_at_ms <= now_ms {
            return;
        }
        let answer = Arc::new(entry.answer.clone());
        if self.config.exact {
            self.exact.insert(entry.exact_key, ExactEntry { answer: answer.clone(), expires_at_ms: entry.expires_at_ms });
        }
        if let (true, Some(scope), Some(embedding), Some(query)) =
            (self.config.semantic, entry.scope, entry.embedding.as_deref(), entry.query.as_ref())
        {
            self.semantic.insert(
                scope,
                embedding,
                SemanticEntry { exact_key: entry.exact_key, query: query.clone(), answer, expires_at_ms: entry.expires_at_ms },
                now_ms,
            );
        }
    }

    /// Loads persisted entries (at start); expired ones are skipped. Returns how many loaded.
    pub fn restore(&self, entries: impl IntoIterator<Item = StoredEntry>, now_ms: u64) -> usize {
        let mut loaded = 0;
        for entry in entries {
            if entry.expires_at_ms > now_ms {
                self.insert(&entry, now_ms);
                loaded += 1;
            }
        }
        loaded
    }

    /// Drops expired semantic entries (the exact tier expires on its own).
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        self.semantic.purge_expired(now_ms)
    }

    pub fn semantic_len(&self) -> usize {
        self.semantic.len()
    }

    pub fn exact_len(&self) -> u64 {
        self.exact.run_pending_tasks();
        self.exact.entry_count()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn on() -> CacheConfig {
        CacheConfig { exact: true, semantic: true, ..CacheConfig::default() }
    }

    fn parts_of(value: &Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn eligibility_follows_temperature_cache_control_and_tools() {
        let config = CacheConfig { max_temperature: 0.5, ..on() };
        let settings = config.settings("auto", None);
        let check = |body: Value, cc: Option<&str>| {
            let map = parts_of(&body);
            eligibility(&config, &settings, &RequestParts::from_body(&map), cc)
        };
        let plain = json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});
        let e = check(plain.clone(), None);
        assert!(e.read && e.write && e.semantic);
        assert_eq!(check(plain.clone(), Some("no-store")).skip_reason, Some("no-store"));
        let no_cache = check(plain.clone(), Some("max-age=0, no-cache"));
        assert!(!no_cache.read && no_cache.write);
        let hot = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(check(hot, None).skip_reason, Some("temperature"), "absent temperature is 1");
        let tool = json!({"model": "auto", "temperature": 0, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "sunny"},
            {"role": "user", "content": "so?"}]});
        assert_eq!(check(tool, None).skip_reason, Some("tool_results"));
        let image = json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "x"}}]}]});
        let e = check(image, None);
        assert!(e.read && !e.semantic, "images are matched exactly only");
    }

    #[test]
    fn overrides_apply_route_then_tenant() {
        let mut config = on();
        config.routes.insert("auto".into(), ScopeOverride { min_cosine: Some(0.9), semantic: Some(false), ..Default::default() });
        config.tenants.insert("acme".into(), ScopeOverride { semantic: Some(true), ..Default::default() });
        let s = config.settings("auto", None);
        assert!(!s.semantic);
        assert!((s.min_cosine - 0.9).abs() < 1e-6);
        assert!(config.settings("auto", Some("acme")).semantic);
        assert!(config.settings("other", None).semantic);
        config.min_cosine = 2.0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_wrong_hit_bound_comes_from_the_tenant_then_the_route_then_the_cache() {
        let mut config = on();
        assert_eq!(config.wrong_hit_bound("auto", Some("acme")), None);
        config.max_wrong_hit_rate = Some(0.05);
        config.routes.insert("auto".into(), ScopeOverride { max_wrong_hit_rate: Some(0.02), ..Default::default() });
        config.tenants.insert("acme".into(), ScopeOverride { max_wrong_hit_rate: Some(0.01), ..Default::default() });
        assert_eq!(config.wrong_hit_bound("auto", Some("acme")), Some(("tenant:acme".into(), 0.01)));
        assert_eq!(config.wrong_hit_bound("auto", Some("other")), Some(("route:auto".into(), 0.02)));
        assert_eq!(config.wrong_hit_bound("m", None), Some(("all".into(), 0.05)));
        assert!(config.validate().is_ok());
        for bad in [0.0, 1.0, -0.1, f64::NAN] {
            config.max_wrong_hit_rate = Some(bad);
            assert!(config.validate().is_err(), "{bad}");
        }
        config.max_wrong_hit_rate = Some(0.05);
        config.audit_share = 1.5;
        assert!(config.validate().is_err());
    }

    struct Fixed(f32);
    impl HitVerifier for Fixed {
        fn score(&self, _: &str, _: &str, _: &[f32], _: &[f32]) -> f32 {
            self.0
        }
        fn threshold(&self) -> f32 {
            0.5
        }
    }

    fn stored(key: u8, scope: u8, embedding: Vec<f32>, expires_at_ms: u64) -> StoredEntry {
        StoredEntry {
            exact_key: [key; 32],
            scope: Some([scope; 32]),
            query: Some(format!("question {key}")),
            embedding: Some(embedding),
            answer: CachedAnswer { model: "m".into(), json: Some(format!("{{\"n\":{key}}}")), chunks: None, usage_chunk: None },
            expires_at_ms,
        }
    }

    #[test]
    fn semantic_hits_need_the_verifier_to_agree() {
        let config = on();
        let settings = config.settings("auto", None);
        let e = vec![1.0, 0.0, 0.0, 0.0];
        let near = vec![0.96, 0.28, 0.0, 0.0];
        for (verifier, expect_hit) in [(0.9f32, true), (0.1, false)] {
            let cache = ResponseCache::new(config.clone(), 4, Some(Arc::new(Fixed(verifier)))).expect("cache");
            cache.insert(&stored(1, 7, e.clone(), u64::MAX), 0);
            let result = cache.lookup_semantic(&[7; 32], &near, "q", &settings, 0);
            assert_eq!(result.is_ok(), expect_hit);
            if let Err(miss) = result {
                assert_eq!(miss, SemanticMiss::Rejected);
            }
            assert_eq!(cache.lookup_semantic(&[8; 32], &near, "q", &settings, 0).err(), Some(SemanticMiss::NoNeighbour));
        }
        let unverified = ResponseCache::new(config, 4, None).expect("cache");
        unverified.insert(&stored(1, 7, e, u64::MAX), 0);
        assert!(!unverified.semantic_enabled());
        assert_eq!(unverified.lookup_semantic(&[7; 32], &near, "q", &settings, 0).err(), Some(SemanticMiss::NoVerifier));
    }

    #[test]
    fn exact_tier_honours_expiry_and_restore_skips_the_expired() {
        let cache = ResponseCache::new(on(), 4, None).expect("cache");
        let loaded = cache.restore([stored(1, 1, vec![1.0, 0.0, 0.0, 0.0], 5_000), stored(2, 1, vec![0.0, 1.0, 0.0, 0.0], 1_000)], 2_000);
        assert_eq!(loaded, 1);
        assert!(cache.lookup_exact(&[1; 32], 2_000).is_some());
        assert!(cache.lookup_exact(&[2; 32], 2_000).is_none());
        assert!(cache.lookup_exact(&[1; 32], 5_000).is_none(), "expired at its time");
    }
}
