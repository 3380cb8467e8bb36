//! `POST /v1/chat/completions`, read top to bottom:
//!
//! 1. **parse**: authenticate, read and parse the body, resolve the model or route, and check
//!    every client header (`x-switchyard-*`) — before any lookup, so a bad header is the same
//!    400 on a cache hit as on a miss;
//! 2. **limits**: admit the caller (rpm / tpm / budget);
//! 3. **cache**: exact hit, else embed the query once and try a semantic hit;
//! 4. **decide**: the route's policy ranks its candidates (a named model: itself, then its
//!    `fallbacks`);
//! 5. **upstream**: call along the ranking with retries and fallback ([`fallback`]);
//! 6. **answer**: JSON, or a stream forwarded as it arrives ([`stream`]);
//! 7. **outcome**: one row per request, written by the log writer without waiting; every
//!    refusal after step 1 found the target leaves a row too.
//!
//! One [`RequestContext`] carries what the steps share; each step is a short method.

pub mod fallback;
mod options;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use uuid::Uuid;

use crate::app::{read_body, AppState};
use crate::error::Error;
use crate::limits::Admission;
use crate::openai::ChatRequest;
use crate::outcome::RequestOutcome;
use crate::providers::UpstreamResponse;
use crate::registry::{ModelEntry, RouteEntry, Target};
use crate::response_cache::{hit_response, CachePlan, HitKind, HEADER_CACHE};
use crate::routing::{Decision, QueryEmbedding};
use crate::store::{Caller, DecisionRecord};
use crate::telemetry::REQUEST_SPANS;
use fallback::UpstreamCall;
pub use options::ClientOptions;
use stream::{client_stream, CacheWrite};

pub const HEADER_REQUEST_ID: &str = "x-switchyard-request-id";
/// The client's own request id: echoed on the answer and recorded on the request's span.
pub const HEADER_CLIENT_REQUEST_ID: &str = "x-request-id";
pub const HEADER_MODEL: &str = "x-switchyard-model";
pub const HEADER_ROUTE: &str = "x-switchyard-route";
/// How a route's model was chosen: `selected`, `explored`, `shed`, `default` or `cache`.
pub const HEADER_DECISION: &str = "x-switchyard-decision";
/// Time spent embedding and scoring, in ms (routes only).
pub const HEADER_DECISION_MS: &str = "x-switchyard-decision-ms";
pub use options::{HEADER_MAX_COST, HEADER_TIMEOUT, HEADER_TRADEOFF};

/// The handler: every request runs inside a span carrying its request id, for traces (log
/// lines leave it out unless `RUST_LOG` names [`REQUEST_SPANS`]; the warnings of the request
/// path name the request id themselves).
pub async fn completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    let request_id = Uuid::now_v7();
    let span = tracing::info_span!(target: REQUEST_SPANS, "chat", %request_id, client_request_id = tracing::field::Empty, model = tracing::field::Empty);
    if let Some(id) = crate::app::client_request_id(&headers).and_then(|v| v.to_str().ok()) {
        span.record("client_request_id", id);
    }
    crate::telemetry::continue_trace(&span, &headers);
    run(state, headers, body, request_id).instrument(span).await
}

/// The steps, each in its own span (free unless traces are on or `RUST_LOG` names the
/// request spans).
async fn run(state: Arc<AppState>, headers: HeaderMap, body: Body, request_id: Uuid) -> Result<Response, Error> {
    use tracing::info_span;
    let ctx = RequestContext::parse(state, headers, body, request_id).instrument(info_span!(target: REQUEST_SPANS, "parse")).await?;
    let admission = ctx.admit().instrument(info_span!(target: REQUEST_SPANS, "limits")).await?;
    let mut plan = ctx.cache_plan();
    if let Some(hit) = ctx.exact_hit(plan.as_ref()).instrument(info_span!(target: REQUEST_SPANS, "cache.exact")).await {
        return Ok(hit);
    }
    let query = ctx.embed_query(plan.as_ref()).instrument(info_span!(target: REQUEST_SPANS, "embed")).await;
    if let Some(hit) = info_span!(target: REQUEST_SPANS, "cache.semantic").in_scope(|| ctx.semantic_hit(plan.as_mut(), &query)) {
        return Ok(hit);
    }
    let decision = info_span!(target: REQUEST_SPANS, "select").in_scope(|| ctx.decide(&query));
    let mut outcome = ctx.outcome(&decision, admission, &query, plan.as_ref());
    let upstream_span = info_span!(target: REQUEST_SPANS, "upstream", model = decision.chosen().name.as_str());
    let (model, upstream) = match ctx.call_upstream(&decision, &mut outcome).instrument(upstream_span).await {
        Ok(answered) => answered,
        Err(error) => {
            outcome.finish_error(&error, ctx.started);
            return Err(error);
        }
    };
    ctx.answer(model, upstream, outcome, &decision, plan, query)
}

/// What the steps of one request share.
struct RequestContext {
    state: Arc<AppState>,
    /// The client's headers (forwarded to providers that pass some through).
    headers: HeaderMap,
    caller: Caller,
    request: ChatRequest,
    target: Target,
    request_id: Uuid,
    started: Instant,
    /// The client's `x-switchyard-*` headers, checked.
    options: ClientOptions,
}

/// The query's text and embedding, extracted once for the cache, the selector and the log.
struct Query {
    text: String,
    embedding: QueryEmbedding,
    /// When embedding began: the decision time counts from here.
    decision_started: Instant,
}

impl Query {
    fn vector(&self) -> Option<router_model::Embedding> {
        match &self.embedding {
            QueryEmbedding::Ready(vector) => Some(vector.clone()),
            _ => None,
        }
    }
}

impl RequestContext {
    /// Step 1: authenticate, read, parse, resolve, check the client's headers.
    async fn parse(state: Arc<AppState>, headers: HeaderMap, body: Body, request_id: Uuid) -> Result<Self, Error> {
        let started = Instant::now();
        let caller = state.auth.authenticate(&headers).await?;
        let bytes = read_body(body, state.max_body_bytes).await?;
        let request = ChatRequest::parse(bytes)?;
        tracing::Span::current().record("model", request.model.as_str());
        let target = state.registry.resolve(&request.model)?;
        let options = ClientOptions::default();
        let mut ctx = Self { state, headers, caller, request, target, request_id, started, options };
        // From here on the request is for a configured model or route: a refusal leaves a row.
        if !ctx.caller.may_use(&ctx.request.model) {
            return Err(ctx.refuse(Error::ModelNotAllowed(ctx.request.model.clone())));
        }
        let route = ctx.route().map(Arc::clone);
        match ClientOptions::from_headers(&ctx.headers, route.as_deref(), ctx.state.timeouts) {
            Ok(options) => ctx.options = options,
            Err(error) => return Err(ctx.refuse(error)),
        }
        Ok(ctx)
    }

    fn route(&self) -> Option<&Arc<RouteEntry>> {
        match &self.target {
            Target::Route(route) => Some(route),
            Target::Model(_) => None,
        }
    }

    /// Logs a request refused before any upstream call (provider `gateway`) and hands the
    /// error back.
    fn refuse(&self, error: Error) -> Error {
        self.outcome_without_upstream("gateway").finish_error(&error, self.started);
        error
    }

    /// Step 2: rate, token and budget limits.
    async fn admit(&self) -> Result<Option<Admission>, Error> {
        self.state.limits.admit(&self.caller).await.map_err(|e| self.refuse(e))
    }

    /// What the cache would do with this request (`None` when the cache is off).
    fn cache_plan(&self) -> Option<CachePlan> {
        let cache = self.state.cache.as_ref()?;
        Some(cache.plan(&self.request, self.caller.tenant.as_deref(), self.route().is_some(), &self.headers))
    }

    /// Step 3a: an answer stored under the same normalised request.
    async fn exact_hit(&self, plan: Option<&CachePlan>) -> Option<Response> {
        let (cache, plan) = (self.state.cache.as_ref()?, plan?);
        let answer = cache.lookup_exact(plan).await?;
        let response = hit_response(&answer, &self.request, &HitKind::Exact)?;
        Some(self.serve_hit(response, "exact", &answer))
    }

    /// Step 3b: embeds the query when the selector or the semantic cache will use it.
    async fn embed_query(&self, plan: Option<&CachePlan>) -> Query {
        let wants_semantic = plan.is_some_and(|p| p.semantic);
        let text = self.request.last_user_text();
        let decision_started = Instant::now();
        let routing = &self.state.routing;
        let embedding = if (self.route().is_some() && routing.has_selector()) || wants_semantic {
            routing.embed_query(&text, decision_started).await
        } else {
            QueryEmbedding::Unavailable
        };
        Query { text, embedding, decision_started }
    }

    /// Step 3c: an answer to a question close enough in meaning, in the same scope (under a
    /// wrong-hit bound, one the calibrator admits; an audited one goes upstream).
    fn semantic_hit(&self, plan: Option<&mut CachePlan>, query: &Query) -> Option<Response> {
        let (cache, plan) = (self.state.cache.as_ref()?, plan?);
        let QueryEmbedding::Ready(vector) = &query.embedding else { return None };
        if !plan.semantic {
            return None;
        }
        let hit = cache.lookup_semantic(plan, vector, &query.text).ok()?;
        if !cache.admit_semantic_hit(plan, &hit, self.request_id) {
            return None;
        }
        let response = hit_response(&hit.answer, &self.request, &HitKind::Semantic(&hit))?;
        Some(self.serve_hit(response, "semantic", &hit.answer))
    }

    /// Step 4: the ranking to try. A route asks its policy; a named model is tried first,
    /// then its configured fallbacks.
    fn decide(&self, query: &Query) -> Decision {
        match &self.target {
            Target::Model(model) => {
                let mut ranking = vec![model.clone()];
                ranking.extend(self.state.registry.fallbacks_of(&model.name).iter().cloned());
                Decision::fixed(ranking)
            }
            Target::Route(route) => self.state.routing.decide_with(
                route,
                &self.request,
                self.options.policy,
                query.decision_started,
                query.embedding.clone(),
            ),
        }
    }

    /// The outcome row of a request that goes upstream, filled with what is known before
    /// the call.
    fn outcome(&self, decision: &Decision, admission: Option<Admission>, query: &Query, plan: Option<&CachePlan>) -> RequestOutcome {
        let route = self.route().map(|r| r.name.clone());
        let mut outcome = RequestOutcome::new(self.request_id, route, decision.chosen(), self.request.stream)
            .log_to(self.state.log.clone())
            .charge_limits(admission);
        outcome.propensity = Some(decision.propensity);
        outcome.checkpoint_version = decision.checkpoint_version.clone();
        outcome.shadow_choice = decision.shadow_choice.clone();
        outcome.embedding = decision.embedding.clone().or_else(|| query.vector());
        if outcome.route.is_some() {
            outcome.candidates = Some(DecisionRecord {
                decision: Some(decision.kind.as_str().to_owned()),
                tradeoff: decision.tradeoff.map(|t| t.to_string()),
                decision_ms: Some(decision.decision_ms),
                scores: decision.candidates.clone().unwrap_or_default(),
                shadow_version: decision.shadow_version.clone(),
                failed_attempts: Vec::new(),
            });
        }
        outcome.tenant = self.caller.tenant.clone();
        outcome.key_id = self.caller.key_id;
        if self.state.log.stores_prompts() {
            outcome.prompt_text = Some(query.text.clone());
        }
        outcome.cache_result = plan.map(|p| match (p.eligibility.read, p.audit.is_some()) {
            (true, true) => "audit",
            (true, false) => "miss",
            (false, _) => "bypass",
        });
        outcome
    }

    /// Step 5: the upstream call, with retries and fallback along the ranking.
    async fn call_upstream(
        &self,
        decision: &Decision,
        outcome: &mut RequestOutcome,
    ) -> Result<(Arc<ModelEntry>, UpstreamResponse), Error> {
        let call = UpstreamCall {
            request_id: self.request_id,
            state: &self.state,
            request: &self.request,
            headers: &self.headers,
            timeouts: self.options.timeouts,
        };
        call.run(&decision.ranking, outcome).await
    }

    /// Step 6: the answer to the client; the outcome row is finished here (JSON) or when
    /// the stream ends, and the answer kept in the cache when it may be.
    fn answer(
        &self,
        model: Arc<ModelEntry>,
        upstream: UpstreamResponse,
        mut outcome: RequestOutcome,
        decision: &Decision,
        plan: Option<CachePlan>,
        query: Query,
    ) -> Result<Response, Error> {
        let cache_status = outcome.cache_result;
        let embedding = query.vector();
        let keep = match (&self.state.cache, plan) {
            (Some(cache), Some(plan)) if plan.eligibility.write => Some(CacheWrite {
                cache: cache.clone(),
                plan,
                embedding,
                query: query.text,
            }),
            _ => None,
        };
        let mut response = match upstream {
            UpstreamResponse::Json { body, usage } => {
                if self.state.log.stores_prompts() {
                    outcome.answer_text = crate::openai::answer_text(&body);
                }
                outcome.finish_ok(usage, &model, self.started, None);
                if let Some(keep) = keep {
                    if let Some(answer) = cache::CachedAnswer::from_json(&model.name, &body) {
                        keep.store(answer);
                    }
                }
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            UpstreamResponse::Stream(pieces) => {
                let pieces = crate::shutdown::cut_on(pieces, self.state.cut_in_flight.clone());
                let stream = client_stream(pieces, self.request.client_wants_usage, model.clone(), outcome, self.started, keep);
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .header(header::CACHE_CONTROL, "no-cache")
                    .body(Body::from_stream(stream))
                    .map_err(|e| Error::Internal(e.to_string()))?
            }
        };
        let route = self.route();
        let headers = response.headers_mut();
        set_identity_headers(headers, self.request_id, model.name_header.clone(), route.and_then(|r| r.name_header.clone()));
        if route.is_some() {
            headers.insert(HEADER_DECISION, HeaderValue::from_static(decision.kind.as_str()));
            if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", decision.decision_ms)) {
                headers.insert(HEADER_DECISION_MS, value);
            }
        }
        if let Some(status) = cache_status {
            headers.insert(HEADER_CACHE, HeaderValue::from_static(status));
        }
        Ok(response)
    }

    /// Answers from the cache: logs the hit (no upstream, no cost) and sets the usual headers.
    fn serve_hit(&self, mut response: Response, kind: &'static str, answer: &cache::CachedAnswer) -> Response {
        let mut outcome = self.outcome_without_upstream("cache");
        outcome.model = answer.model.clone();
        outcome.cache_result = Some(kind);
        if self.state.log.stores_prompts() {
            outcome.prompt_text = Some(self.request.last_user_text());
        }
        outcome.finish_cache_hit(self.started);
        let route = self.route();
        let headers = response.headers_mut();
        set_identity_headers(headers, self.request_id, HeaderValue::from_str(&answer.model).ok(), route.and_then(|r| r.name_header.clone()));
        if route.is_some() {
            headers.insert(HEADER_DECISION, HeaderValue::from_static("cache"));
        }
        response
    }

    /// The outcome row of a request the gateway answers without an upstream call, under the
    /// model it asked for (a route's default for a route); `provider` says who answered.
    fn outcome_without_upstream(&self, provider: &str) -> RequestOutcome {
        let (route, nominal) = match &self.target {
            Target::Model(model) => (None, model),
            Target::Route(route) => (Some(route.name.clone()), &route.default),
        };
        let mut outcome = RequestOutcome::new(self.request_id, route, nominal, self.request.stream).log_to(self.state.log.clone());
        outcome.provider = provider.into();
        outcome.tenant = self.caller.tenant.clone();
        outcome.key_id = self.caller.key_id;
        outcome
    }
}

/// Header names as values made once (a `&str` name is parsed and checked at each insert).
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);
const MODEL_NAME: HeaderName = HeaderName::from_static(HEADER_MODEL);
const ROUTE_NAME: HeaderName = HeaderName::from_static(HEADER_ROUTE);

/// The request id, the model that answered and the route asked for (values built once per
/// model and route, see [`ModelEntry::name_header`]).
fn set_identity_headers(headers: &mut HeaderMap, request_id: Uuid, model: Option<HeaderValue>, route: Option<HeaderValue>) {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    if let Ok(value) = HeaderValue::from_bytes(request_id.hyphenated().encode_lower(&mut id).as_bytes()) {
        headers.insert(REQUEST_ID_NAME, value);
    }
    if let Some(value) = model {
        headers.insert(MODEL_NAME, value);
    }
    if let Some(value) = route {
        headers.insert(ROUTE_NAME, value);
    }
}
