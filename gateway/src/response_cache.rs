//! The response cache on the request path: what a request may use, hits as responses, and
//! answers stored (in memory at once, in the database off the request path).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cache::calibration::{answers_agree, CalibrationStatus, Calibrator, Evidence, Verdict};
use cache::{
    eligibility, exact_key, now_ms, semantic_scope, CachedAnswer, Digest, Eligibility, HitVerifier, RequestParts,
    ResponseCache, SemanticHit, SemanticMiss, Settings, StoredEntry,
};

use crate::config::{resolve_env_ref, Config};
use crate::redis_client::BoundedRedis;
use crate::error::Error;
use crate::openai::ChatRequest;
use crate::sse::SseParser;
use crate::store::cache_entries::CalibrationRecord;
use crate::store::Store;
use crate::tasks::Background;

/// `exact`, `semantic`, `miss`, `audit` (a semantic candidate checked against the upstream) or
/// `bypass` (not eligible).
pub const HEADER_CACHE: &str = "x-switchyard-cache";
/// Cosine between the query and the cached question (semantic hits).
pub const HEADER_CACHE_SIMILARITY: &str = "x-switchyard-cache-similarity";
/// The verifier's probability that both ask the same (semantic hits).
pub const HEADER_CACHE_VERIFIER: &str = "x-switchyard-cache-verifier";

/// Streams larger than this are not kept for the cache (the answer is still served).
const MAX_STREAM_CAPTURE_BYTES: usize = 1 << 20;
/// How often expired entries are dropped from memory and the database.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// A refresh also reads entries written this long before the previous one started: another
/// replica persists an answer after serving it, so a row can land with an earlier
/// `created_at_ms` than rows already read (and replica clocks differ a little).
const REFRESH_OVERLAP_MS: u64 = 30_000;
/// Where the shipped verifier checkpoint lives.
pub const DEFAULT_VERIFIER_DIR: &str = "models/verifier/default";

/// The cache, the Redis tier replicas share, and where entries are persisted.
pub struct GatewayCache {
    cache: ResponseCache,
    shared: Option<SharedTier>,
    store: Option<Store>,
    /// Where writes to the shared tier and the database run (drained at shutdown).
    background: Background,
    /// Thresholds kept within the operator's wrong-hit bounds (`max_wrong_hit_rate`).
    calibrator: Calibrator,
    /// `[cache] audit_judge`: compares an audit's answers when their words differ.
    audit_judge: Option<AuditJudge>,
}

/// The model that judges audited answers, and the client to call it with.
pub struct AuditJudge {
    pub model: Arc<crate::registry::ModelEntry>,
    pub http: crate::providers::UpstreamClient,
}

/// Exact entries in Redis, so one replica's answer is a hit on every replica.
struct SharedTier {
    redis: BoundedRedis,
    prefix: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SharedEntry {
    answer: CachedAnswer,
    expires_at_ms: u64,
}

impl SharedTier {
    fn key(&self, digest: &Digest) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 7 + 64);
        key.push_str(&self.prefix);
        key.push_str(":cache:");
        for b in digest {
            let _ = write!(key, "{b:02x}");
        }
        key
    }

    async fn get(&self, digest: &Digest) -> Option<SharedEntry> {
        let key = self.key(digest);
        let value: Option<String> = match self.redis.call(|mut c| async move { redis::AsyncCommands::get(&mut c, key).await }).await {
            Ok(value) => value,
            Err(e) => {
                tracing::debug!(error = %e, "shared cache tier unavailable");
                return None;
            }
        };
        serde_json::from_str(&value?).ok()
    }

    async fn set(&self, digest: &Digest, entry: &SharedEntry, ttl_ms: u64) {
        let (key, Ok(value)) = (self.key(digest), serde_json::to_string(entry)) else { return };
        let result: Result<(), String> = self
            .redis
            .call(|mut c| async move { redis::AsyncCommands::pset_ex(&mut c, key, value, ttl_ms).await })
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "answer not shared through Redis");
        }
    }
}

/// What the cache may do for one request, decided once before any lookup.
pub struct CachePlan {
    pub settings: Settings,
    pub eligibility: Eligibility,
    pub exact_key: Digest,
    pub scope: Option<Digest>,
    pub tenant: Option<String>,
    /// Semantic lookup wanted (eligible, tier on, route or allowed direct model).
    pub semantic: bool,
    /// The wrong-hit bound that applies and where it was set (`tenant:NAME`, `route:NAME`,
    /// `all`); semantic candidates are then served or audited by the calibrator.
    pub wrong_hit_bound: Option<(String, f64)>,
    /// Set when a semantic candidate was audited: the upstream answers, and its answer is
    /// compared with this one's when stored.
    pub audit: Option<Audit>,
}

/// A semantic candidate answered by the upstream instead, to check it.
pub struct Audit {
    scope: String,
    bound: f64,
    score: f32,
    cached: Arc<CachedAnswer>,
}

impl GatewayCache {
    /// Whether `[cache]` can serve semantic hits (and so needs the embedder): the tier is on
    /// and a verifier is configured or shipped, or the verifier is not required.
    pub fn wants_embedder(config: &Config) -> bool {
        let settings = &config.cache;
        settings.semantic
            && (!settings.require_verifier || settings.verifier.is_some() || std::path::Path::new(DEFAULT_VERIFIER_DIR).exists())
    }

    /// Builds the cache when `[cache]` turns a tier on; loads persisted entries.
    pub async fn build(
        config: &Config,
        store: &Store,
        embedding_dim: Option<usize>,
        background: &Background,
        audit_judge: Option<AuditJudge>,
    ) -> Result<Option<Arc<Self>>, Error> {
        let settings = &config.cache;
        if !settings.exact && !settings.semantic {
            return Ok(None);
        }
        let verifier = if settings.semantic { load_verifier(settings.verifier.clone())? } else { None };
        let semantic_possible = settings.semantic && (verifier.is_some() || !settings.require_verifier);
        if settings.semantic && !semantic_possible {
            tracing::warn!("semantic cache: no verifier checkpoint; only exact hits are served (set [cache] verifier or require_verifier = false)");
        }
        let embedding_dim = if semantic_possible { embedding_dim.unwrap_or(0) } else { 0 };
        let cache = ResponseCache::new(settings.clone(), embedding_dim, verifier)
            .map_err(|e| Error::Config(e.to_string()))?;
        let store = settings.persist.then(|| store.clone());
        let shared = match &settings.redis_url {
            Some(url) => {
                let url = resolve_env_ref("[cache] redis_url", url)?;
                let redis = BoundedRedis::open(&url, Duration::from_millis(settings.redis_timeout_ms))
                    .map_err(|e| Error::Config(format!("[cache] redis_url: {e}")))?;
                Some(SharedTier { redis, prefix: settings.redis_prefix.clone() })
            }
            None => None,
        };
        let this = Arc::new(Self { cache, shared, store, background: background.clone(), calibrator: Calibrator::new(), audit_judge });
        if let Some(store) = &this.store {
            let started = now_ms();
            match store.load_cache_entries(started, 0).await {
                Ok(entries) => {
                    let loaded = this.cache.restore(entries.into_iter().map(|(entry, _)| entry), now_ms());
                    tracing::info!(loaded, "response cache restored from the database");
                }
                Err(e) => tracing::warn!(error = %e, "could not load the response cache; starting cold"),
            }
            if settings.semantic && semantic_possible {
                match store.load_calibration().await {
                    Ok(records) => {
                        let loaded = records.len();
                        for r in records {
                            let evidence = Evidence::parse(&r.evidence).unwrap_or(Evidence::Audit);
                            this.calibrator.restore(&r.scope, r.score as f32, r.wrong, evidence);
                        }
                        tracing::info!(loaded, "semantic cache calibration evidence restored");
                    }
                    Err(e) => tracing::warn!(error = %e, "could not load the cache's calibration evidence; bounds learn again"),
                }
            }
            if settings.refresh_ms > 0 {
                spawn_refresh(background, Arc::downgrade(&this), Duration::from_millis(settings.refresh_ms), started);
            }
        }
        spawn_purge(background, Arc::downgrade(&this));
        tracing::info!(exact = settings.exact, semantic = this.cache.semantic_enabled(), "response cache on");
        Ok(Some(this))
    }

    pub fn semantic_enabled(&self) -> bool {
        self.cache.semantic_enabled()
    }

    /// Entries held in this process: (exact tier, semantic index).
    pub fn len(&self) -> (u64, usize) {
        (self.cache.exact_len(), self.cache.semantic_len())
    }

    pub fn plan(&self, request: &ChatRequest, tenant: Option<&str>, is_route: bool, headers: &HeaderMap) -> CachePlan {
        let config = self.cache.config();
        let parts = RequestParts::from_body(request.body());
        let settings = config.settings(&request.model, tenant);
        let cache_control = headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok());
        let eligibility = eligibility(config, &settings, &parts, cache_control);
        let tenant_key = tenant.unwrap_or("");
        let semantic = eligibility.semantic
            && self.cache.semantic_enabled()
            && (is_route || config.semantic_direct_models);
        CachePlan {
            settings,
            eligibility,
            exact_key: exact_key(tenant_key, &parts),
            scope: if semantic { semantic_scope(tenant_key, &parts) } else { None },
            tenant: tenant.map(str::to_owned),
            semantic,
            wrong_hit_bound: if semantic { config.wrong_hit_bound(&request.model, tenant) } else { None },
            audit: None,
        }
    }

    /// The in-process tier, then the Redis tier (whose hit is kept in process too).
    pub async fn lookup_exact(&self, plan: &CachePlan) -> Option<Arc<CachedAnswer>> {
        if !plan.eligibility.read || !self.cache.config().exact {
            return None;
        }
        let now = now_ms();
        if let Some(answer) = self.cache.lookup_exact(&plan.exact_key, now) {
            return Some(answer);
        }
        let shared = self.shared.as_ref()?.get(&plan.exact_key).await?;
        if shared.expires_at_ms <= now {
            return None;
        }
        let entry = StoredEntry {
            exact_key: plan.exact_key,
            scope: None,
            query: None,
            embedding: None,
            answer: shared.answer,
            expires_at_ms: shared.expires_at_ms,
        };
        self.cache.insert(&entry, now);
        self.cache.lookup_exact(&plan.exact_key, now)
    }

    pub fn lookup_semantic(&self, plan: &CachePlan, embedding: &[f32], query: &str) -> Result<SemanticHit, SemanticMiss> {
        match (&plan.scope, plan.eligibility.read) {
            (Some(scope), true) => self.cache.lookup_semantic(scope, embedding, query, &plan.settings, now_ms()),
            _ => Err(SemanticMiss::NoNeighbour),
        }
    }

    /// Whether a semantic candidate the verifier passed is served. Under a wrong-hit bound
    /// the calibrator decides; an audited candidate is remembered in `plan` and checked
    /// against the upstream's answer when that is stored.
    pub fn admit_semantic_hit(&self, plan: &mut CachePlan, hit: &SemanticHit, request_id: uuid::Uuid) -> bool {
        let Some((scope, bound)) = plan.wrong_hit_bound.clone() else { return true };
        // Without a verifier (require_verifier = false) the cosine is the score to calibrate.
        let score = hit.verifier_score.unwrap_or(hit.cosine);
        match self.calibrator.decide(&scope, bound, score, self.cache.config().audit_share, rand::random::<f64>()) {
            Verdict::Serve => {
                self.calibrator.remember_served(request_id.as_u128(), &scope, bound, score);
                true
            }
            Verdict::Audit => {
                plan.audit = Some(Audit { scope, bound, score, cached: hit.answer.clone() });
                false
            }
        }
    }

    /// A client's score on an earlier request: evidence for the calibrator when that request
    /// was a served semantic hit under a bound (below 0.5: a wrong hit).
    pub fn feedback(self: &Arc<Self>, request_id: uuid::Uuid, score: f64) {
        if let Some((scope, bound, hit_score)) = self.calibrator.take_served(request_id.as_u128()) {
            self.observe(&scope, bound, hit_score, score < 0.5, Evidence::Feedback);
        }
    }

    /// Records evidence for a bound, and keeps it in the database off the request path.
    fn observe(self: &Arc<Self>, scope: &str, bound: f64, score: f32, wrong: bool, evidence: Evidence) {
        self.calibrator.observe(scope, bound, score, wrong, evidence);
        if let Some(store) = self.store.clone() {
            let record = CalibrationRecord { scope: scope.to_owned(), score: f64::from(score), wrong, evidence: evidence.as_str().to_owned() };
            self.background.spawn_work(async move {
                if let Err(e) = store.save_calibration(&record, now_ms()).await {
                    tracing::debug!(error = %e, "cache calibration evidence not persisted");
                }
            });
        }
    }

    /// Records whether an audited candidate's cached answer says what the upstream's fresh
    /// one does: the same words agree at once; otherwise the audit judge decides off the
    /// request path (without one, different words count as a wrong hit).
    fn check_audit(self: &Arc<Self>, audit: &Audit, fresh: &CachedAnswer, question: &str) {
        let (Some(cached), Some(fresh)) = (audit.cached.text(), fresh.text()) else {
            self.observe(&audit.scope, audit.bound, audit.score, true, Evidence::Audit);
            return;
        };
        if answers_agree(&cached, &fresh) {
            self.observe(&audit.scope, audit.bound, audit.score, false, Evidence::Audit);
            return;
        }
        let Some(judge) = &self.audit_judge else {
            self.observe(&audit.scope, audit.bound, audit.score, true, Evidence::Audit);
            return;
        };
        let (this, question) = (self.clone(), question.to_owned());
        let (scope, bound, score) = (audit.scope.clone(), audit.bound, audit.score);
        let (model, http) = (judge.model.clone(), judge.http.clone());
        self.background.spawn_work(async move {
            // No verdict (the judge failed or said nothing readable): no evidence either way.
            if let Some(same) = crate::judge::same_answer(&http, &model, &question, &fresh, &cached).await {
                this.observe(&scope, bound, score, !same, Evidence::Audit);
            }
        });
    }

    /// Each bounded scope's threshold and evidence, for the dashboard.
    pub fn calibration(&self) -> Vec<CalibrationStatus> {
        self.calibrator.status()
    }

    /// Keeps an answer: in memory now, in the database on a spawned task. An audited
    /// candidate's cached answer is compared with it first.
    pub fn store(self: &Arc<Self>, plan: &CachePlan, answer: CachedAnswer, embedding: Option<&[f32]>, query: String) {
        if let Some(audit) = &plan.audit {
            self.check_audit(audit, &answer, &query);
        }
        if !plan.eligibility.write {
            return;
        }
        let now = now_ms();
        let ttl_ms = u64::try_from(plan.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let semantic = plan.scope.is_some() && embedding.is_some();
        let entry = StoredEntry {
            exact_key: plan.exact_key,
            scope: plan.scope.filter(|_| semantic),
            query: semantic.then_some(query),
            embedding: embedding.filter(|_| semantic).map(<[f32]>::to_vec),
            answer,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        self.cache.insert(&entry, now);
        let persist = self.store.is_some() || (self.shared.is_some() && self.cache.config().exact);
        if persist {
            let this = self.clone();
            let tenant = plan.tenant.clone();
            self.background.spawn_work(async move {
                if let (Some(shared), true) = (&this.shared, this.cache.config().exact) {
                    let value = SharedEntry { answer: entry.answer.clone(), expires_at_ms: entry.expires_at_ms };
                    shared.set(&entry.exact_key, &value, ttl_ms).await;
                }
                if let Some(store) = &this.store {
                    if let Err(e) = store.save_cache_entry(&entry, tenant.as_deref(), now).await {
                        tracing::debug!(error = %e, "cache entry not persisted");
                    }
                }
            });
        }
    }
}

/// The verifier checkpoint named in config, else the shipped one when present.
fn load_verifier(dir: Option<PathBuf>) -> Result<Option<Arc<dyn HitVerifier>>, Error> {
    let explicit = dir.is_some();
    let dir = dir.unwrap_or_else(|| PathBuf::from(DEFAULT_VERIFIER_DIR));
    if !dir.exists() {
        if explicit {
            return Err(Error::Config(format!("[cache] verifier {} does not exist", dir.display())));
        }
        return Ok(None);
    }
    let verifier = cache::verifier::Verifier::load(&dir)
        .map_err(|e| Error::Config(format!("[cache] verifier {}: {e}", dir.display())))?;
    tracing::info!(path = %dir.display(), threshold = verifier.threshold(), "semantic cache verifier loaded");
    Ok(Some(Arc::new(verifier)))
}

fn spawn_purge(background: &Background, cache: Weak<GatewayCache>) {
    background.spawn_loop("cache purge", async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(cache) = cache.upgrade() else { break };
            let now = now_ms();
            cache.cache.purge_expired(now);
            if let Some(store) = &cache.store {
                if let Err(e) = store.purge_cache_entries(now).await {
                    tracing::debug!(error = %e, "expired cache entries not purged");
                }
            }
        }
    });
}

/// Loads what other replicas persisted since the last look, so their answers (semantic ones
/// too, which the Redis tier does not carry) become hits here without a restart. An entry
/// already held with the same expiry is skipped; a newer version of a key replaces it.
fn spawn_refresh(background: &Background, cache: Weak<GatewayCache>, every: Duration, restored_at_ms: u64) {
    background.spawn_loop("cache refresh", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut since_ms = restored_at_ms.saturating_sub(REFRESH_OVERLAP_MS);
        // Expiry of every key read in the overlap window, to skip re-inserting it.
        let mut seen: std::collections::HashMap<Digest, (u64, u64)> = std::collections::HashMap::new();
        loop {
            tick.tick().await;
            let Some(cache) = cache.upgrade() else { break };
            let Some(store) = &cache.store else { break };
            let started = now_ms();
            match store.load_cache_entries(started, since_ms).await {
                Ok(entries) => {
                    let mut loaded = 0usize;
                    for (entry, created_at_ms) in entries {
                        if seen.get(&entry.exact_key).is_some_and(|&(expires, _)| expires == entry.expires_at_ms) {
                            continue;
                        }
                        seen.insert(entry.exact_key, (entry.expires_at_ms, created_at_ms));
                        cache.cache.insert(&entry, started);
                        loaded += 1;
                    }
                    since_ms = started.saturating_sub(REFRESH_OVERLAP_MS);
                    seen.retain(|_, &mut (_, created)| created >= since_ms);
                    if loaded > 0 {
                        tracing::debug!(loaded, "response cache refreshed from the database");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "response cache not refreshed"),
            }
        }
    });
}

/// How a hit was found, for the response headers.
pub enum HitKind<'a> {
    Exact,
    Semantic(&'a SemanticHit),
}

/// The response for a cache hit: the stored body, or its chunks replayed as an SSE stream.
/// `None` when the entry lacks the form the client wants (then the request goes upstream).
pub fn hit_response(answer: &CachedAnswer, request: &ChatRequest, kind: &HitKind<'_>) -> Option<Response> {
    let mut response = if request.stream {
        let events = answer.sse_events(request.client_wants_usage);
        if events.len() <= 1 {
            return None;
        }
        let stream = futures_util::stream::iter(events.into_iter().map(Ok::<Bytes, std::convert::Infallible>));
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(stream))
            .ok()?
    } else {
        ([(header::CONTENT_TYPE, "application/json")], answer.json_body()?).into_response()
    };
    let headers = response.headers_mut();
    match kind {
        HitKind::Exact => {
            headers.insert(HEADER_CACHE, HeaderValue::from_static("exact"));
        }
        HitKind::Semantic(hit) => {
            headers.insert(HEADER_CACHE, HeaderValue::from_static("semantic"));
            if let Ok(v) = HeaderValue::from_str(&format!("{:.4}", hit.cosine)) {
                headers.insert(HEADER_CACHE_SIMILARITY, v);
            }
            if let Some(v) = hit.verifier_score.and_then(|s| HeaderValue::from_str(&format!("{s:.4}")).ok()) {
                headers.insert(HEADER_CACHE_VERIFIER, v);
            }
        }
    }
    Some(response)
}

/// Collects a stream's `data:` payloads as they pass, to cache the answer once it completes.
pub struct StreamCapture {
    parser: SseParser,
    payloads: Vec<String>,
    bytes: usize,
    overflowed: bool,
}

impl StreamCapture {
    pub fn new() -> Self {
        Self { parser: SseParser::new(), payloads: Vec::new(), bytes: 0, overflowed: false }
    }

    pub fn push(&mut self, bytes: &Bytes) {
        if self.overflowed {
            return;
        }
        self.bytes += bytes.len();
        if self.bytes > MAX_STREAM_CAPTURE_BYTES {
            self.overflowed = true;
            self.payloads.clear();
            return;
        }
        self.parser.push(bytes.clone());
        while let Some(event) = self.parser.next_event() {
            if !event.is_done() && !event.data().is_empty() {
                self.payloads.push(event.into_data());
            }
        }
    }

    /// The answer, when the stream was captured whole and ended properly.
    pub fn finish(self, model: &str) -> Option<CachedAnswer> {
        if self.overflowed {
            return None;
        }
        let payloads: Vec<&str> = self.payloads.iter().map(String::as_str).collect();
        CachedAnswer::from_stream(model, &payloads)
    }
}

impl Default for StreamCapture {
    fn default() -> Self {
        Self::new()
    }
}
