//! The key admin API (master key only; open access counts only when no master key is
//! configured): the same operations as `switchyard keys`, from the same functions.
//!
//! - `POST /admin/keys` `{"tenant", "name"?, "rpm"?, "tpm"?, "budget_usd"?, "models"?}` → 201
//!   with the record and the key (shown this once);
//! - `GET /admin/keys` → every key's record (never a key or its hash);
//! - `PATCH /admin/keys/{id}` `{"rpm"?, "tpm"?, "budget_usd"?, "models"?}` (`null` removes a
//!   limit) → the updated record;
//! - `POST /admin/keys/{id}/revoke` → the record, disabled.
//!
//! Changes reach every gateway within its key cache's fresh TTL (`[auth] key_cache_ttl_ms`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

use crate::app::{read_body, AppState};
use crate::error::Error;
use crate::store::keys::{create_key, update_key};
use crate::store::{KeyUpdate, LogStore, NewKey};

async fn administrator(state: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let caller = state.auth.authenticate(headers).await?;
    if !state.auth.may_administer(&caller) {
        return Err(Error::Unauthorized);
    }
    Ok(())
}

async fn json_body<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, Error> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("invalid request body: {e}")))
}

fn parse_id(id: &str) -> Result<Uuid, Error> {
    id.parse().map_err(|_| Error::invalid_param("id", format!("`{id}` is not a key id")))
}

pub async fn create(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    administrator(&state, &headers).await?;
    let new: NewKey = json_body(&state, body).await?;
    let (record, key) = create_key(&state.store, new).await?;
    let mut body = serde_json::to_value(&record).map_err(|e| Error::Internal(e.to_string()))?;
    body["key"] = json!(key);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    administrator(&state, &headers).await?;
    let keys = state.store.list_keys().await?;
    Ok(axum::Json(json!({"object": "list", "data": keys})).into_response())
}

pub async fn update(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, Error> {
    administrator(&state, &headers).await?;
    let id = parse_id(&id)?;
    let change: KeyUpdate = json_body(&state, body).await?;
    let record = update_key(&state.store, id, change).await?.ok_or_else(|| Error::NotFound(format!("no key with id {id}")))?;
    Ok(axum::Json(record).into_response())
}

pub async fn revoke(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Error> {
    administrator(&state, &headers).await?;
    let id = parse_id(&id)?;
    if !state.store.set_key_enabled(id, false).await? {
        return Err(Error::NotFound(format!("no key with id {id}")));
    }
    let record = state.store.list_keys().await?.into_iter().find(|k| k.id == id);
    Ok(axum::Json(record).into_response())
}
