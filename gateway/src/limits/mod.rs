//! Per-key and per-tenant limits: requests per minute, tokens per minute, USD per period.
//!
//! A request is *admitted* before the upstream call: its requests-per-minute counters are
//! checked and bumped in one step, and it is refused when a tokens-per-minute or budget
//! counter is already at its limit. Tokens and cost are *charged* when the outcome is known
//! (the JSON answer, or the end of the stream), so a request that crosses a token or budget
//! limit is served and the *next* one is refused.
//!
//! Counters live in process memory ([`local`]) or, with `[limits] redis_url`, in Redis
//! ([`redis`]) so that every replica sees the same counts. Windows are fixed: the UTC minute
//! for rpm/tpm, the UTC day or month (or never reset) for budgets.

mod local;
mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{Datelike, TimeZone, Utc};

use crate::config::{BudgetPeriod, FailureMode, LimitsConfig};
use crate::error::Error;
use crate::store::Caller;

pub use local::LocalCounters;
pub use redis::RedisCounters;

/// Budgets are counted in nano-USD so that counters stay integers (atomic in Redis, exact).
const NANO_PER_USD: f64 = 1e9;
/// At most one "limiter backend failed" log line per this many seconds.
const FAILURE_LOG_EVERY_SECS: u64 = 10;

pub use crate::error::LimitKind;

/// Limits of one subject; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget_usd: Option<f64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.budget_usd.is_none()
    }
}

/// Who a limit applies to: one virtual key or one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// `key` or `tenant`.
    pub scope: &'static str,
    pub id: String,
    pub limits: Limits,
}

/// Counter names and limits for one subject within the current windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    pub rpm_key: String,
    pub tpm_key: String,
    pub budget_key: String,
    /// `-1`: no limit.
    pub rpm_limit: i64,
    pub tpm_limit: i64,
    pub budget_limit_nano: i64,
}

/// The windows a request falls into, computed once from the wall clock (replicas share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub minute: u64,
    /// Seconds until the current minute ends (at least 1).
    pub minute_left_secs: u64,
    /// Period id for budgets (`YYYYMM`, `YYYYMMDD` or 0).
    pub period: u64,
    /// Seconds until the budget period ends (at least 1; a long time for `total`).
    pub period_left_secs: u64,
}

impl Windows {
    pub fn at(now: SystemTime, period: BudgetPeriod) -> Self {
        let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let minute = secs / 60;
        let minute_left_secs = (60 - secs % 60).max(1);
        let date = Utc.timestamp_opt(i64::try_from(secs).unwrap_or(0), 0).single().unwrap_or_default();
        let next_start = |y: i32, m: u32, d: u32| {
            Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
                .single()
                .map(|t| u64::try_from(t.timestamp()).unwrap_or(0))
                .unwrap_or(secs + 86_400)
        };
        let (period_id, period_end) = match period {
            BudgetPeriod::Month => {
                let (y, m) = if date.month() == 12 { (date.year() + 1, 1) } else { (date.year(), date.month() + 1) };
                let id = u64::try_from(date.year()).unwrap_or(0) * 100 + u64::from(date.month());
                (id, next_start(y, m, 1))
            }
            BudgetPeriod::Day => {
                let id = u64::try_from(date.year()).unwrap_or(0) * 10_000 + u64::from(date.month()) * 100 + u64::from(date.day());
                let end = (secs / 86_400 + 1) * 86_400;
                (id, end)
            }
            BudgetPeriod::Total => (0, secs + 365 * 86_400),
        };
        Self {
            minute,
            minute_left_secs,
            period: period_id,
            period_left_secs: period_end.saturating_sub(secs).max(1),
        }
    }
}

fn limit(value: Option<u64>) -> i64 {
    value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn nano_usd(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        // Saturating float-to-int cast: a budget beyond 9e9 USD is as good as none.
        (usd * NANO_PER_USD).round() as i64
    } else {
        0
    }
}

impl Subject {
    pub fn counters(&self, prefix: &str, windows: &Windows) -> Counters {
        let base = format!("{prefix}:{}:{}", self.scope, self.id);
        Counters {
            rpm_key: format!("{base}:rpm:{}", windows.minute),
            tpm_key: format!("{base}:tpm:{}", windows.minute),
            budget_key: format!("{base}:usd:{}", windows.period),
            rpm_limit: limit(self.limits.rpm),
            tpm_limit: limit(self.limits.tpm),
            budget_limit_nano: self.limits.budget_usd.map_or(-1, nano_usd),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub kind: LimitKind,
    pub subject: usize,
}

/// Where counters live.
pub enum Backend {
    Local(LocalCounters),
    Redis(Box<RedisCounters>),
}

/// Checks and charges limits; one per gateway process, shared by all requests.
pub struct Limiter {
    backend: Backend,
    prefix: String,
    period: BudgetPeriod,
    failure_mode: FailureMode,
    tenants: std::collections::BTreeMap<String, Limits>,
    last_failure_log: AtomicU64,
}

/// What an admitted request carries until its outcome is known.
#[derive(Clone)]
pub struct Admission {
    limiter: Arc<Limiter>,
    subjects: Arc<[Subject]>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("subjects", &self.subjects).finish()
    }
}

impl Limiter {
    pub fn from_config(config: &LimitsConfig) -> Result<Self, Error> {
        let backend = match config.resolved_redis_url()? {
            Some(url) => Backend::Redis(Box::new(RedisCounters::new(&url, Duration::from_millis(config.redis_timeout_ms))?)),
            None => Backend::Local(LocalCounters::default()),
        };
        let tenants = config
            .tenants
            .iter()
            .map(|(name, t)| (name.clone(), Limits { rpm: t.rpm, tpm: t.tpm, budget_usd: t.budget_usd }))
            .collect();
        Ok(Self {
            backend,
            prefix: config.key_prefix.clone(),
            period: config.budget_period,
            failure_mode: config.on_backend_error,
            tenants,
            last_failure_log: AtomicU64::new(0),
        })
    }

    /// The backend's name, for the start-up log line.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "in-process",
            Backend::Redis(_) => "redis",
        }
    }

    /// The limits that apply to a caller: its key's and its tenant's.
    pub fn subjects(&self, caller: &Caller) -> Vec<Subject> {
        let mut subjects = Vec::new();
        if let Some(key) = &caller.key {
            let to_u64 = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
            let limits = Limits { rpm: to_u64(key.rpm), tpm: to_u64(key.tpm), budget_usd: key.budget_usd };
            if !limits.is_empty() {
                subjects.push(Subject { scope: "key", id: key.id.to_string(), limits });
            }
        }
        if let Some(limits) = caller.tenant.as_ref().and_then(|t| self.tenants.get(t).map(|l| (t, l))) {
            if !limits.1.is_empty() {
                subjects.push(Subject { scope: "tenant", id: limits.0.clone(), limits: *limits.1 });
            }
        }
        subjects
    }

    /// Admits a request or refuses it with a 429. `None`: nothing to charge later.
    pub async fn admit(self: &Arc<Self>, caller: &Caller) -> Result<Option<Admission>, Error> {
        let subjects = self.subjects(caller);
        if subjects.is_empty() {
            return Ok(None);
        }
        let windows = Windows::at(SystemTime::now(), self.period);
        let counters: Vec<Counters> = subjects.iter().map(|s| s.counters(&self.prefix, &windows)).collect();
        let checked = match &self.backend {
            Backend::Local(local) => Ok(local.admit(&counters)),
            Backend::Redis(redis) => redis.admit(&counters).await,
        };
        let refusal = match checked {
            Ok(refusal) => refusal,
            Err(error) => {
                self.backend_failed("admit", &error);
                if self.failure_mode == FailureMode::Closed {
                    return Err(error);
                }
                None
            }
        };
        if let Some(refusal) = refusal {
            let subject = &subjects[refusal.subject.min(subjects.len() - 1)];
            crate::metrics::METRICS
                .limit_rejections
                .with_label_values(&[refusal.kind.as_str(), subject.scope])
                .inc();
            let retry_after_secs = match refusal.kind {
                LimitKind::Requests | LimitKind::Tokens => windows.minute_left_secs,
                LimitKind::Budget => windows.period_left_secs,
            };
            return Err(Error::LimitExceeded { kind: refusal.kind, scope: subject.scope, retry_after_secs });
        }
        Ok(Some(Admission { limiter: self.clone(), subjects: subjects.into() }))
    }

    async fn charge(&self, subjects: &[Subject], tokens: u64, cost_usd: f64) {
        let windows = Windows::at(SystemTime::now(), self.period);
        let counters: Vec<Counters> = subjects.iter().map(|s| s.counters(&self.prefix, &windows)).collect();
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        let nano = nano_usd(cost_usd);
        let result = match &self.backend {
            Backend::Local(local) => {
                local.charge(&counters, tokens, nano);
                Ok(())
            }
            Backend::Redis(redis) => redis.charge(&counters, tokens, nano, windows.period_left_secs).await,
        };
        if let Err(error) = result {
            self.backend_failed("charge", &error);
        }
    }

    /// Counts a backend failure; logs at most one line per [`FAILURE_LOG_EVERY_SECS`].
    fn backend_failed(&self, op: &'static str, error: &Error) {
        crate::metrics::METRICS.limit_backend_errors.with_label_values(&[op]).inc();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_failure_log.load(Ordering::Relaxed);
        if now >= last + FAILURE_LOG_EVERY_SECS
            && self
                .last_failure_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mode = match self.failure_mode {
                FailureMode::Open => "letting requests through",
                FailureMode::Closed => "refusing requests",
            };
            tracing::warn!(%error, op, "rate limiter backend failed; {mode}");
        }
    }

    /// Current value of a subject's counters (rpm, tpm, nano-USD), for tests and tools.
    pub async fn usage(&self, subject: &Subject) -> Result<(i64, i64, i64), Error> {
        let windows = Windows::at(SystemTime::now(), self.period);
        let counters = subject.counters(&self.prefix, &windows);
        match &self.backend {
            Backend::Local(local) => Ok(local.usage(&counters)),
            Backend::Redis(redis) => redis.usage(&counters).await,
        }
    }
}

impl Admission {
    /// Charges what the request used. In-process counters are charged before this returns;
    /// Redis is charged by a spawned task so the caller (often a `Drop`) never waits.
    pub fn charge(self, tokens: u64, cost_usd: f64) {
        match &self.limiter.backend {
            Backend::Local(local) => {
                let windows = Windows::at(SystemTime::now(), self.limiter.period);
                let counters: Vec<Counters> =
                    self.subjects.iter().map(|s| s.counters(&self.limiter.prefix, &windows)).collect();
                local.charge(&counters, i64::try_from(tokens).unwrap_or(i64::MAX), nano_usd(cost_usd));
            }
            Backend::Redis(_) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { self.limiter.charge(&self.subjects, tokens, cost_usd).await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ApiKey;

    fn at(text: &str) -> SystemTime {
        let t = chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp()).unwrap_or(0);
        UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
    }

    #[test]
    fn windows_follow_the_utc_calendar() {
        let w = Windows::at(at("2026-12-31T23:59:30Z"), BudgetPeriod::Month);
        assert_eq!(w.period, 202_612);
        assert_eq!(w.period_left_secs, 30);
        assert_eq!(w.minute_left_secs, 30);
        let w = Windows::at(at("2026-02-10T12:00:00Z"), BudgetPeriod::Month);
        assert_eq!(w.period, 202_602);
        assert_eq!(w.period_left_secs, (18 * 24 + 12) * 3600);
        assert_eq!(w.minute_left_secs, 60);
        let w = Windows::at(at("2026-02-10T12:00:00Z"), BudgetPeriod::Day);
        assert_eq!(w.period, 20_260_210);
        assert_eq!(w.period_left_secs, 12 * 3600);
    }

    fn limiter(tenants: &str) -> Arc<Limiter> {
        let config: LimitsConfig = toml::from_str(tenants).unwrap_or_default();
        Arc::new(Limiter::from_config(&config).unwrap_or_else(|e| panic!("{e}")))
    }

    fn caller(rpm: Option<i64>, tpm: Option<i64>, budget: Option<f64>) -> Caller {
        let key = ApiKey {
            id: uuid::Uuid::now_v7(),
            key_hash: vec![],
            tenant: "acme".into(),
            name: None,
            rpm,
            tpm,
            budget_usd: budget,
            enabled: true,
            created_at: Utc::now(),
            models: crate::store::ModelAllowList::default(),
        };
        Caller { tenant: Some("acme".into()), key_id: Some(key.id), key: Some(Arc::new(key)), master: false }
    }

    fn refused(result: Result<Option<Admission>, Error>) -> Option<(LimitKind, &'static str, u64)> {
        match result {
            Err(Error::LimitExceeded { kind, scope, retry_after_secs }) => Some((kind, scope, retry_after_secs)),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => None,
        }
    }

    #[tokio::test]
    async fn rpm_allows_exactly_the_limit() {
        let limiter = limiter("");
        let caller = caller(Some(3), None, None);
        let mut admitted = 0;
        let mut first_refusal = None;
        for _ in 0..10 {
            match refused(limiter.admit(&caller).await) {
                None => admitted += 1,
                Some(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        // All ten fall within one minute unless the test straddles a minute boundary.
        assert!(admitted == 3 || admitted == 6, "admitted {admitted}");
        let (kind, scope, retry) = first_refusal.unwrap_or((LimitKind::Budget, "", 0));
        assert_eq!((kind, scope), (LimitKind::Requests, "key"));
        assert!((1..=60).contains(&retry), "{retry}");
    }

    #[tokio::test]
    async fn tokens_block_the_next_request_once_charged() {
        let limiter = limiter("");
        let caller = caller(None, Some(100), None);
        let admission = limiter.admit(&caller).await.ok().flatten();
        assert!(admission.is_some());
        admission.into_iter().for_each(|a| a.charge(60, 0.0));
        // 60 < 100: still admitted; then 120 ≥ 100: refused.
        let admission = limiter.admit(&caller).await.ok().flatten();
        admission.into_iter().for_each(|a| a.charge(60, 0.0));
        let refusal = refused(limiter.admit(&caller).await);
        assert_eq!(refusal.map(|r| (r.0, r.1)), Some((LimitKind::Tokens, "key")));
    }

    #[tokio::test]
    async fn budget_blocks_until_the_period_ends() {
        let limiter = limiter("budget_period = \"day\"");
        let caller = caller(None, None, Some(0.001));
        let admission = limiter.admit(&caller).await.ok().flatten();
        admission.into_iter().for_each(|a| a.charge(10, 0.0011));
        let refusal = refused(limiter.admit(&caller).await);
        let (kind, _, retry) = refusal.unwrap_or((LimitKind::Requests, "", 0));
        assert_eq!(kind, LimitKind::Budget);
        assert!((1..=86_400).contains(&retry), "{retry}");
    }

    #[tokio::test]
    async fn tenant_limits_apply_across_its_keys_and_refusals_do_not_count() {
        let limiter = limiter("[tenants.acme]\nrpm = 2\n");
        let a = caller(None, None, None);
        let b = caller(Some(100), None, None);
        assert!(refused(limiter.admit(&a).await).is_none());
        assert!(refused(limiter.admit(&b).await).is_none());
        let refusal = refused(limiter.admit(&b).await);
        if let Some((kind, scope, _)) = refusal {
            assert_eq!((kind, scope), (LimitKind::Requests, "tenant"));
            // The refused request did not bump the key's own counter.
            let subjects = limiter.subjects(&b);
            let usage = limiter.usage(&subjects[0]).await.unwrap_or_default();
            assert_eq!(usage.0, 1);
        } else {
            // Only when the three requests straddled a minute boundary.
            assert!(Windows::at(SystemTime::now(), BudgetPeriod::Month).minute_left_secs > 58);
        }
    }

    #[tokio::test]
    async fn callers_without_limits_are_not_counted() {
        let limiter = limiter("");
        assert!(limiter.admit(&caller(None, None, None)).await.ok().flatten().is_none());
        assert!(limiter.admit(&Caller::default()).await.ok().flatten().is_none());
    }
}
