//! Virtual keys: per-tenant API keys that the gateway issues, checks and revokes.
//!
//! A key (`sk-sy-` + 40 random alphanumerics) is shown once, at creation; only its blake3
//! hash is stored. The request path checks keys through an in-process cache so that a busy
//! gateway does not query the database per request; a revoked key stops working within the
//! cache's fresh TTL. While the database is unreachable, keys checked within the stale TTL
//! keep working, so a database blip does not lock every tenant out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{LogStore, Store};
use crate::error::Error;

/// Every virtual key starts with this, so a log line or a leaked secret scanner can tell
/// what it is.
pub const KEY_PREFIX: &str = "sk-sy-";
const KEY_RANDOM_CHARS: usize = 40;
/// A lookup that takes longer than this counts as the database being unreachable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) const SELECT_KEYS: &str =
    "SELECT id, key_hash, tenant, name, rpm, tpm, budget_usd, enabled, created_at, models FROM api_keys";

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    #[serde(skip)]
    pub key_hash: Vec<u8>,
    pub tenant: String,
    pub name: Option<String>,
    /// Requests per minute allowed (see [`crate::limits`]).
    pub rpm: Option<i64>,
    /// Tokens per minute allowed, prompt + completion.
    pub tpm: Option<i64>,
    /// Spend allowed per `[limits] budget_period`, in USD.
    pub budget_usd: Option<f64>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    /// The models and routes this key may name.
    #[sqlx(try_from = "Option<String>")]
    pub models: ModelAllowList,
}

/// The model and route names a key may use; `None`: every one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelAllowList(pub Option<Vec<String>>);

impl ModelAllowList {
    pub fn allows(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// The column's value: a JSON array, or NULL.
    pub fn to_column(&self) -> Option<String> {
        self.0.as_ref().map(|names| serde_json::Value::from(names.clone()).to_string())
    }
}

impl TryFrom<Option<String>> for ModelAllowList {
    type Error = serde_json::Error;

    fn try_from(column: Option<String>) -> Result<Self, Self::Error> {
        column.as_deref().map(serde_json::from_str).transpose().map(Self)
    }
}

/// What `keys create` and `POST /admin/keys` ask for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub tenant: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub rpm: Option<i64>,
    #[serde(default)]
    pub tpm: Option<i64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Models and routes the key may use (absent: all).
    #[serde(default)]
    pub models: ModelAllowList,
}

/// A change to a key's limits (`keys update`, `PATCH /admin/keys/{id}`): a field left out
/// stays as it is; `null` removes that limit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    #[serde(default, deserialize_with = "present")]
    pub rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub budget_usd: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub models: Option<Option<Vec<String>>>,
}

/// A field that is present (possibly `null`) becomes `Some`, an absent one stays `None`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

fn check_limits(rpm: Option<i64>, tpm: Option<i64>, budget_usd: Option<f64>, models: Option<&Vec<String>>) -> Result<(), Error> {
    if rpm.is_some_and(|n| n < 1) {
        return Err(Error::invalid_param("rpm", "rpm must be at least 1"));
    }
    if tpm.is_some_and(|n| n < 1) {
        return Err(Error::invalid_param("tpm", "tpm must be at least 1"));
    }
    if budget_usd.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
        return Err(Error::invalid_param("budget_usd", "budget_usd must be a non-negative number"));
    }
    if models.is_some_and(|m| m.iter().any(|name| name.trim().is_empty())) {
        return Err(Error::invalid_param("models", "model names must not be empty"));
    }
    Ok(())
}

/// Applies `update` to the key `id`; the updated record, or `None` when no such key exists.
/// Serving gateways see the change within their key cache's fresh TTL.
pub async fn update_key(store: &impl LogStore, id: Uuid, update: KeyUpdate) -> Result<Option<ApiKey>, Error> {
    check_limits(
        update.rpm.flatten(),
        update.tpm.flatten(),
        update.budget_usd.flatten(),
        update.models.as_ref().and_then(Option::as_ref),
    )?;
    if update == KeyUpdate::default() {
        return Err(Error::invalid("nothing to update: give rpm, tpm, budget_usd or models"));
    }
    if !store.update_key(id, &update).await? {
        return Ok(None);
    }
    Ok(store.list_keys().await?.into_iter().find(|k| k.id == id))
}

/// A fresh random key. `rand::rng()` is a CSPRNG seeded from the OS.
pub fn generate_key() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

/// What is stored instead of the key.
pub fn hash_key(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

/// Creates and stores a key; returns the record and the key, which is not kept anywhere.
pub async fn create_key(store: &impl LogStore, new: NewKey) -> Result<(ApiKey, String), Error> {
    if new.tenant.trim().is_empty() {
        return Err(Error::invalid_param("tenant", "a key needs a non-empty tenant"));
    }
    check_limits(new.rpm, new.tpm, new.budget_usd, new.models.0.as_ref())?;
    let key = generate_key();
    let record = ApiKey {
        id: Uuid::now_v7(),
        key_hash: hash_key(&key).to_vec(),
        tenant: new.tenant,
        name: new.name,
        rpm: new.rpm,
        tpm: new.tpm,
        budget_usd: new.budget_usd,
        enabled: true,
        created_at: super::now(),
        models: new.models,
    };
    store.insert_key(&record).await?;
    Ok((record, key))
}

/// Who is calling, as established by [`Authenticator::authenticate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    /// The key's tenant; `None` for open access and the master key.
    pub tenant: Option<String>,
    pub key_id: Option<Uuid>,
    /// The virtual key's record, for limits and budgets.
    pub key: Option<Arc<ApiKey>>,
    /// Whether the caller presented the master key.
    pub master: bool,
}

impl Caller {
    /// Whether this caller may name `model` (a model or route): a key with an allow-list
    /// only its names; everyone else any.
    pub fn may_use(&self, model: &str) -> bool {
        self.key.as_ref().is_none_or(|key| key.models.allows(model))
    }

    fn anonymous() -> Self {
        Self::default()
    }

    fn master() -> Self {
        Self {
            master: true,
            ..Self::default()
        }
    }

    fn from_key(key: Arc<ApiKey>) -> Self {
        Self {
            tenant: Some(key.tenant.clone()),
            key_id: Some(key.id),
            key: Some(key),
            master: false,
        }
    }
}

#[derive(Debug, Clone)]
struct CachedLookup {
    /// `None`: no such key (cached too, so a flood of bad keys does not reach the database).
    key: Option<Arc<ApiKey>>,
    checked: Instant,
}

/// Decides who may call `/v1/*`: open access, the master key, or a virtual key.
pub struct Authenticator {
    store: Store,
    open: bool,
    master_key: Option<String>,
    fresh_ttl: Duration,
    cache: moka::future::Cache<[u8; 32], CachedLookup>,
}

impl Authenticator {
    /// `fresh_ttl`: how long a lookup is trusted (revocation delay). `stale_ttl`: how long a
    /// lookup is used when the database cannot be asked.
    pub fn new(store: Store, open: bool, master_key: Option<String>, fresh_ttl: Duration, stale_ttl: Duration) -> Self {
        Self {
            store,
            open,
            master_key,
            fresh_ttl,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(stale_ttl.max(fresh_ttl))
                .build(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Who may use the admin endpoints and the dashboard: the master key; or, only when open
    /// access is on **and** no master key is configured (the local demo), anyone without a
    /// virtual key. Configuring a master key always closes them to callers without it.
    pub fn may_administer(&self, caller: &Caller) -> bool {
        caller.master || (self.open && self.master_key.is_none() && caller.key_id.is_none())
    }

    /// Open access lets everyone in, but a valid virtual key is still attributed to its
    /// tenant. Otherwise the bearer token must be the master key or an enabled virtual key.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            return if self.open { Ok(Caller::anonymous()) } else { Err(Error::Unauthorized) };
        };
        if let Some(master) = &self.master_key {
            if constant_time_eq(presented.as_bytes(), master.as_bytes()) {
                return Ok(Caller::master());
            }
        }
        if presented.starts_with(KEY_PREFIX) {
            match self.lookup(presented).await {
                Ok(Some(key)) if key.enabled => return Ok(Caller::from_key(key)),
                Ok(_) => {}
                Err(error) if self.open => {
                    tracing::warn!(%error, "key lookup failed; serving as open access");
                }
                Err(error) => return Err(error),
            }
        }
        if self.open {
            Ok(Caller::anonymous())
        } else {
            Err(Error::Unauthorized)
        }
    }

    /// The stored record for `key`, through the cache.
    pub async fn lookup(&self, key: &str) -> Result<Option<Arc<ApiKey>>, Error> {
        let hash = hash_key(key);
        let cached = self.cache.get(&hash).await;
        if let Some(cached) = &cached {
            if cached.checked.elapsed() < self.fresh_ttl {
                return Ok(cached.key.clone());
            }
        }
        let looked_up = match tokio::time::timeout(LOOKUP_TIMEOUT, self.store.key_by_hash(&hash)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Database {
                context: "looking up a key",
                source: Arc::new(sqlx::Error::PoolTimedOut),
            }),
        };
        match looked_up {
            Ok(found) => {
                let key = found.map(Arc::new);
                self.cache
                    .insert(hash, CachedLookup { key: key.clone(), checked: Instant::now() })
                    .await;
                Ok(key)
            }
            Err(error) => match cached {
                Some(stale) => {
                    tracing::warn!(%error, "key lookup failed; using the cached answer");
                    Ok(stale.key)
                }
                None => Err(error),
            },
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_look_right_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert!(a[KEY_PREFIX.len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(hash_key(&a), hash_key(&a));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
