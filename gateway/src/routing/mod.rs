//! Learned routing on the request path: embed the query once, score every candidate of the
//! route with the selector, and let the policy choose for the caller's trade-off.
//!
//! The checkpoint is held behind an atomic pointer: a reload swaps it in one step, and a
//! request that already took the old one finishes with it. When the embedder cannot answer
//! before the decision deadline, the route's default model is used at once (the request is
//! "shed"): passthrough traffic never waits for the model thread.

pub mod policy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use router_model::{
    BertEmbedder, ChatTurn, Checkpoint, Embedder, EmbedderOptions, Embedding, EmbeddingService,
    ModelSource, RequestFeatures, ServiceConfig,
};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::RouterConfig;
use crate::error::Error;
use crate::openai::{content_text, ChatRequest};
use crate::registry::{ModelEntry, RouteEntry};
use crate::store::ScoredCandidate;
use crate::tasks::Background;
pub use policy::{choose, parse_tradeoff, Exploration, Scored, Tradeoff};

/// A checkpoint ready to serve, with each configured model mapped to its head.
pub struct LoadedSelector {
    pub checkpoint: Checkpoint,
    /// `<dir name>@<created_at>`: logged with every decision.
    pub version: String,
    /// Configured model name → head index (own head, or its `like` model's).
    heads: HashMap<String, usize>,
    /// selector.json's modification time when loaded (for the file watch).
    modified: Option<SystemTime>,
}

/// How a decision was reached (logged, and sent back as `x-switchyard-decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// The client named a model, not a route.
    Fixed,
    /// The selector's best candidate for the trade-off.
    Selected,
    /// A non-best candidate, chosen by exploration.
    Explored,
    /// The embedder missed the decision deadline: the route's default model.
    Shed,
    /// No selector checkpoint is loaded (or it knows none of the candidates).
    Default,
    /// The selector predicted no candidate better than the route's default by the route's
    /// `min_advantage`: the default.
    Unsure,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Selected => "selected",
            Self::Explored => "explored",
            Self::Shed => "shed",
            Self::Default => "default",
            Self::Unsure => "unsure",
        }
    }
}

/// The routing decision for one request.
pub struct Decision {
    /// Chosen model first, then the fallback order.
    pub ranking: Vec<Arc<ModelEntry>>,
    pub kind: DecisionKind,
    /// Probability the policy had of choosing `ranking[0]` (1 for fixed/default/shed).
    pub propensity: f64,
    /// Every scored candidate with its predictions.
    pub candidates: Option<Vec<ScoredCandidate>>,
    pub checkpoint_version: Option<String>,
    /// What the shadow checkpoint would have chosen (never served).
    pub shadow_choice: Option<String>,
    pub shadow_version: Option<String>,
    /// The query embedding, when one was computed (reused by the semantic cache and logged).
    pub embedding: Option<Embedding>,
    pub tradeoff: Option<Tradeoff>,
    pub decision_ms: f64,
}

impl Decision {
    /// A model the client named: tried first, then `fallbacks` in order.
    pub fn fixed(ranking: Vec<Arc<ModelEntry>>) -> Self {
        Self::plain(ranking, DecisionKind::Fixed)
    }

    fn plain(ranking: Vec<Arc<ModelEntry>>, kind: DecisionKind) -> Self {
        Self {
            ranking,
            kind,
            propensity: 1.0,
            candidates: None,
            checkpoint_version: None,
            shadow_choice: None,
            shadow_version: None,
            embedding: None,
            tradeoff: None,
            decision_ms: 0.0,
        }
    }

    pub fn chosen(&self) -> &Arc<ModelEntry> {
        // Every constructor puts at least one model in the ranking.
        &self.ranking[0]
    }
}

/// Per-request routing options from headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestPolicy {
    pub tradeoff: Option<Tradeoff>,
    pub max_cost_usd: Option<f64>,
}

struct ModelInfo {
    name: String,
    upstream_model: String,
    like: Option<String>,
}

/// A request's query embedding, computed once and shared by the semantic cache and the
/// selector.
#[derive(Debug, Clone)]
pub enum QueryEmbedding {
    Ready(Embedding),
    /// The embedder missed the decision deadline (overloaded) or failed: shed.
    Missed,
    /// No embedder is loaded.
    Unavailable,
}

pub struct RoutingEngine {
    config: RouterConfig,
    models: Vec<ModelInfo>,
    embedding: std::sync::OnceLock<EmbeddingService>,
    active: ArcSwapOption<LoadedSelector>,
    shadow: ArcSwapOption<LoadedSelector>,
    /// Decides `challenger_share` of routed requests (see [`RouterConfig::challenger_share`]).
    challenger: ArcSwapOption<LoadedSelector>,
    challenger_path: Option<PathBuf>,
    /// Serialises reloads (the file watch, SIGHUP and the admin endpoint may race).
    reload_lock: Mutex<()>,
    /// Serialises loading the embedder: a warm-up and the first requests load it once.
    embedder_lock: Mutex<()>,
}

impl RoutingEngine {
    /// Loads the configured checkpoints (and the embedder, when a checkpoint needs it).
    /// A missing checkpoint is not an error: routes then use their default model.
    pub async fn start(config: RouterConfig, models: &HashMap<String, Arc<ModelEntry>>, background: &Background) -> Result<Arc<Self>, Error> {
        let models = models
            .values()
            .map(|m| ModelInfo {
                name: m.name.clone(),
                upstream_model: m.upstream_model.clone(),
                like: m.like.clone(),
            })
            .collect();
        let challenger_path = config.challenger_path();
        let engine = Arc::new(Self {
            config,
            models,
            embedding: std::sync::OnceLock::new(),
            active: ArcSwapOption::empty(),
            shadow: ArcSwapOption::empty(),
            challenger: ArcSwapOption::empty(),
            challenger_path,
            reload_lock: Mutex::new(()),
            embedder_lock: Mutex::new(()),
        });
        engine.reload().await?;
        if engine.config.reload_poll_ms > 0 {
            let watched = Arc::downgrade(&engine);
            let period = Duration::from_millis(engine.config.reload_poll_ms);
            background.spawn_loop("selector reload watch", async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(engine) = watched.upgrade() else { break };
                    if engine.checkpoint_changed() {
                        if let Err(e) = engine.reload().await {
                            tracing::error!(error = %e, "selector reload failed; keeping the current checkpoint");
                        }
                    }
                }
            });
        }
        Ok(engine)
    }

    pub fn active_version(&self) -> Option<String> {
        self.active.load().as_ref().map(|s| s.version.clone())
    }

    pub fn shadow_version(&self) -> Option<String> {
        self.shadow.load().as_ref().map(|s| s.version.clone())
    }

    /// Where the serving checkpoint is read from (`[router] checkpoint`).
    pub fn checkpoint_path(&self) -> Option<&Path> {
        self.config.checkpoint.as_deref()
    }

    /// The serving checkpoint, for read-only views (the dashboard shows its metrics).
    pub fn active(&self) -> Option<Arc<LoadedSelector>> {
        self.active.load_full()
    }

    /// The shadow checkpoint, for read-only views.
    pub fn shadow(&self) -> Option<Arc<LoadedSelector>> {
        self.shadow.load_full()
    }

    /// Share of an exploring route's requests the challenger decides.
    pub fn challenger_share(&self) -> f64 {
        self.config.challenger_share
    }

    /// The challenger checkpoint, for read-only views.
    pub fn challenger(&self) -> Option<Arc<LoadedSelector>> {
        self.challenger.load_full()
    }

    /// The embedding service, once a checkpoint has needed it.
    pub fn embedding_service(&self) -> Option<&EmbeddingService> {
        self.embedding.get()
    }

    fn checkpoint_changed(&self) -> bool {
        let changed = |path: &Option<PathBuf>, loaded: &ArcSwapOption<LoadedSelector>| {
            let Some(path) = path else { return false };
            let now = modified(path);
            let before = loaded.load().as_ref().and_then(|s| s.modified);
            now.is_some() && now != before
        };
        // A challenger also changes by disappearing (the learn step removes it).
        let challenger_changed = self.challenger_path.as_ref().is_some_and(|path| {
            modified(path) != self.challenger.load().as_ref().and_then(|s| s.modified)
        });
        changed(&self.config.checkpoint, &self.active) || changed(&self.config.shadow_checkpoint, &self.shadow) || challenger_changed
    }

    /// (Re)loads the active, shadow and challenger checkpoints from their paths and swaps
    /// them in atomically. A checkpoint that fails to load leaves the current one in place; a
    /// challenger whose directory is gone is dropped.
    pub async fn reload(&self) -> Result<(), Error> {
        let _guard = self.reload_lock.lock().await;
        for (path, slot, role) in [
            (&self.config.checkpoint, &self.active, "active"),
            (&self.config.shadow_checkpoint, &self.shadow, "shadow"),
            (&self.challenger_path, &self.challenger, "challenger"),
        ] {
            let Some(path) = path else { continue };
            if !path.join("selector.json").is_file() {
                match role {
                    "active" => tracing::warn!(
                        path = %path.display(),
                        "no selector checkpoint: routes send every request to their default model until one is trained (switchyard train) and reloaded"
                    ),
                    "challenger" if slot.swap(None).is_some() => {
                        tracing::info!(path = %path.display(), "challenger checkpoint removed; the active checkpoint decides every request");
                    }
                    _ => {}
                }
                continue;
            }
            let service = self.ensure_embedder().await?;
            let (embedder_id, dim) = (service.embedder_id().to_owned(), service.dim());
            let dir = path.clone();
            let checkpoint = tokio::task::spawn_blocking(move || Checkpoint::load(&dir, &embedder_id, dim))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|e| Error::Config(format!("{role} checkpoint {}: {e}", path.display())))?;
            let loaded = self.prepare(checkpoint, path);
            tracing::info!(role, version = %loaded.version, candidates = ?loaded.checkpoint.candidates(), "selector checkpoint loaded");
            slot.store(Some(Arc::new(loaded)));
        }
        Ok(())
    }

    async fn ensure_embedder(&self) -> Result<&EmbeddingService, Error> {
        if let Some(service) = self.embedding.get() {
            return Ok(service);
        }
        let _loading = self.embedder_lock.lock().await;
        if let Some(service) = self.embedding.get() {
            return Ok(service);
        }
        let source = match &self.config.embedder_dir {
            Some(dir) => ModelSource::Dir(dir.clone()),
            None => ModelSource::default_dir(),
        };
        let options = EmbedderOptions {
            max_tokens: self.config.embedder_max_tokens,
            ..EmbedderOptions::default()
        };
        let service_config = ServiceConfig {
            threads: self.config.embedder_threads.unwrap_or(ServiceConfig::default().threads),
            ..ServiceConfig::default()
        };
        let service = tokio::task::spawn_blocking(move || {
            let embedder = BertEmbedder::load(&source, &options)?;
            tracing::info!(embedder = %embedder.id(), "embedder loaded");
            EmbeddingService::start(Arc::new(embedder), service_config)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::Config(format!("embedder: {e} (run scripts/fetch-model.sh)")))?;
        Ok(self.embedding.get_or_init(|| service))
    }

    fn prepare(&self, checkpoint: Checkpoint, path: &Path) -> LoadedSelector {
        let mut heads = HashMap::new();
        for model in &self.models {
            // A model is known by its own name, its upstream name, or its `like`.
            let resolved = checkpoint
                .resolve_candidate(&model.name, model.like.as_deref())
                .or_else(|| checkpoint.resolve_candidate(&model.upstream_model, None))
                .or_else(|| checkpoint.resolve_candidate(&router_model::canonical_model_id(&model.upstream_model), None));
            match resolved {
                Some(resolved) => {
                    heads.insert(model.name.clone(), resolved.index);
                }
                None => tracing::debug!(model = %model.name, "model unknown to the selector; it is only used as a route default or fallback"),
            }
        }
        let dir_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let version = format!("{dir_name}@{}", checkpoint.meta.created_at);
        LoadedSelector {
            checkpoint,
            version,
            heads,
            modified: modified(path),
        }
    }

    /// Whether a selector checkpoint (active or shadow) is loaded, so routes embed queries.
    pub fn has_selector(&self) -> bool {
        self.active.load().is_some() || self.shadow.load().is_some()
    }

    /// Loads the embedder now if no checkpoint did (the semantic cache needs it too) and
    /// returns its dimension.
    pub async fn start_embedder(&self) -> Result<usize, Error> {
        Ok(self.ensure_embedder().await?.dim())
    }

    /// Embeds the request's last user message (`query`) within the decision deadline counted
    /// from `started`. Computed once per request: the semantic cache and the selector share it.
    pub async fn embed_query(&self, query: &str, started: Instant) -> QueryEmbedding {
        let Some(service) = self.embedding.get() else {
            return QueryEmbedding::Unavailable;
        };
        let deadline = started + Duration::from_millis(self.config.decision_timeout_ms);
        match service.embed(query, deadline).await {
            Ok(embedding) => QueryEmbedding::Ready(embedding),
            Err(e) => {
                if !e.is_overloaded() {
                    tracing::warn!(error = %e, "embedding failed; using the route default");
                }
                QueryEmbedding::Missed
            }
        }
    }

    /// The uniform draw in [0, 1) that decides a routed request's exploration: random, or with
    /// `[router] exploration_seed` a keyed hash of the seed and the last user message.
    fn exploration_draw(&self, request: &ChatRequest) -> f64 {
        match self.config.exploration_seed {
            None => rand::random(),
            Some(seed) => seeded_draw(seed, &request.last_user_text()),
        }
    }

    /// Chooses a model of `route` given the query's embedding (see [`Self::embed_query`]);
    /// `started` is when the decision began, for the decision time.
    pub fn decide_with(
        &self,
        route: &RouteEntry,
        request: &ChatRequest,
        options: RequestPolicy,
        started: Instant,
        embedding: QueryEmbedding,
    ) -> Decision {
        let default_first = || {
            let mut ranking = vec![route.default.clone()];
            ranking.extend(route.candidates.iter().filter(|c| c.name != route.default.name).cloned());
            ranking
        };
        let active = self.active.load_full();
        let shadow = self.shadow.load_full();
        if active.is_none() && shadow.is_none() {
            return Decision::plain(default_first(), DecisionKind::Default);
        }
        let embedding = match embedding {
            QueryEmbedding::Ready(embedding) => embedding,
            QueryEmbedding::Unavailable => return Decision::plain(default_first(), DecisionKind::Default),
            QueryEmbedding::Missed => {
                let mut decision = Decision::plain(default_first(), DecisionKind::Shed);
                decision.checkpoint_version = active.as_ref().map(|a| a.version.clone());
                decision.decision_ms = started.elapsed().as_secs_f64() * 1e3;
                return decision;
            }
        };
        let features = request_features(request);
        let tradeoff = options.tradeoff.unwrap_or(route.tradeoff);

        let mut decision = match active.as_deref().and_then(|a| score(a, route, &embedding, &features, tradeoff)) {
            Some(mut scored) => {
                let default_index = route.candidates.iter().position(|c| c.name == route.default.name);
                let unsure = default_index
                    .is_some_and(|d| policy::prefer_default_when_unsure(&mut scored, d, route.min_advantage));
                let draw = self.exploration_draw(request);
                // Only routes that explore run experiments: an exploration of 0 serves the
                // active checkpoint alone.
                let challenger_scored = if self.config.challenger_share > 0.0 && route.exploration.max_share > 0.0 {
                    self.challenger.load().as_deref().and_then(|c| score(c, route, &embedding, &features, tradeoff))
                } else {
                    None
                };
                let choice = match &challenger_scored {
                    Some(challenger) => policy::choose_with_challenger(
                        &scored,
                        challenger,
                        options.max_cost_usd,
                        &route.exploration,
                        self.config.challenger_share,
                        draw,
                    ),
                    None => choose(&scored, options.max_cost_usd, &route.exploration, draw),
                };
                match choice {
                    Some(choice) => {
                        let mut ranking: Vec<Arc<ModelEntry>> =
                            choice.ranking.iter().map(|&i| route.candidates[i].clone()).collect();
                        // Models the selector cannot score still serve as last-resort fallbacks.
                        for candidate in &route.candidates {
                            if !ranking.iter().any(|m| m.name == candidate.name) {
                                ranking.push(candidate.clone());
                            }
                        }
                        let mut decision = Decision::plain(
                            ranking,
                            match (choice.explored, unsure) {
                                (true, _) => DecisionKind::Explored,
                                (false, true) => DecisionKind::Unsure,
                                (false, false) => DecisionKind::Selected,
                            },
                        );
                        decision.propensity = choice.propensity;
                        decision.candidates = Some(logged_candidates(route, &scored, &choice.probabilities));
                        decision
                    }
                    None => Decision::plain(default_first(), DecisionKind::Default),
                }
            }
            None => Decision::plain(default_first(), DecisionKind::Default),
        };
        decision.checkpoint_version = active.as_ref().map(|a| a.version.clone());
        if let Some(shadow) = shadow.as_deref() {
            if let Some(scored) = score(shadow, route, &embedding, &features, tradeoff) {
                decision.shadow_choice = choose(&scored, options.max_cost_usd, &Exploration::OFF, 0.0)
                    .map(|c| route.candidates[c.ranking[0]].name.clone());
                decision.shadow_version = Some(shadow.version.clone());
            }
        }
        decision.embedding = Some(embedding);
        decision.tradeoff = Some(tradeoff);
        decision.decision_ms = started.elapsed().as_secs_f64() * 1e3;
        decision
    }
}

fn modified(checkpoint_dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(checkpoint_dir.join("selector.json")).and_then(|m| m.modified()).ok()
}

/// Selector predictions for the route's candidates that the checkpoint knows.
fn score(
    selector: &LoadedSelector,
    route: &RouteEntry,
    embedding: &[f32],
    features: &RequestFeatures,
    tradeoff: Tradeoff,
) -> Option<Vec<Scored>> {
    let predictions = match selector.checkpoint.predict(embedding, features) {
        Ok(predictions) => predictions,
        Err(e) => {
            tracing::warn!(error = %e, "selector failed; using the route default");
            return None;
        }
    };
    let candidates: Vec<policy::Candidate> = route
        .candidates
        .iter()
        .enumerate()
        .filter_map(|(index, model)| {
            Some(policy::Candidate {
                index,
                head: *selector.heads.get(&model.name)?,
                price: model.price(),
            })
        })
        .collect();
    let scored = policy::score(&predictions, &candidates, features.prompt_tokens, tradeoff);
    (!scored.is_empty()).then_some(scored)
}

/// Every scored candidate with its price and the probability the policy gave it (0 when the
/// cost ceiling removed it), so a later policy can be evaluated against the logged one
/// exactly, with its own predictions.
fn logged_candidates(route: &RouteEntry, scored: &[Scored], probabilities: &[(usize, f64)]) -> Vec<ScoredCandidate> {
    scored
        .iter()
        .map(|s| {
            let model = &route.candidates[s.candidate];
            let price = model.price();
            ScoredCandidate {
                model: model.name.clone(),
                quality: s.quality,
                cost_usd: s.cost_usd,
                latency_ms: s.latency_ms,
                utility: s.utility,
                probability: probabilities.iter().find(|(i, _)| *i == s.candidate).map_or(0.0, |(_, p)| *p),
                input_usd_per_mtok: price.input_usd_per_mtok,
                output_usd_per_mtok: price.output_usd_per_mtok,
            }
        })
        .collect()
}

/// The selector's request features, from the OpenAI request.
pub fn request_features(request: &ChatRequest) -> RequestFeatures {
    let texts: Vec<(String, String)> = request
        .messages()
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default().to_owned();
            (role, content_text(m.get("content")))
        })
        .collect();
    let turns: Vec<ChatTurn<'_>> = texts.iter().map(|(role, content)| ChatTurn { role, content }).collect();
    let has_tools = request.body().get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let max_tokens = request
        .body()
        .get("max_completion_tokens")
        .or_else(|| request.body().get("max_tokens"))
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok());
    RequestFeatures::compute(&turns, has_tools, max_tokens, None)
}

/// A uniform draw in [0, 1) from a keyed hash of `seed` and `text`: independent of arrival
/// order and thread, so a seeded run explores the same prompts the same way.
fn seeded_draw(seed: u64, text: &str) -> f64 {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let hash = blake3::keyed_hash(&key, text.as_bytes());
    let mut bits = [0u8; 8];
    bits.copy_from_slice(&hash.as_bytes()[..8]);
    // The top 53 bits make an f64 in [0, 1) with every value equally likely.
    (u64::from_le_bytes(bits) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::seeded_draw;

    #[test]
    fn seeded_draws_repeat_per_prompt_and_spread_uniformly_across_prompts() {
        assert_eq!(seeded_draw(7, "what is 2+2?"), seeded_draw(7, "what is 2+2?"));
        assert_ne!(seeded_draw(7, "what is 2+2?"), seeded_draw(8, "what is 2+2?"));
        let draws: Vec<f64> = (0..10_000).map(|i| seeded_draw(42, &format!("prompt {i}"))).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        // Each tenth of [0, 1) holds 1,000 ± 5 standard deviations (σ = 30) of the draws.
        for decile in 0..10 {
            let count = draws.iter().filter(|&&d| (d * 10.0) as usize == decile).count();
            assert!((850..=1150).contains(&count), "decile {decile} holds {count} draws");
        }
    }
}
