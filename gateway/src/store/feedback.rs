//! `POST /v1/feedback`: a score for an earlier request, which training joins to its row.
//!
//! Body: `{"request_id": "…", "score": 0.8}` or `{"request_id": "…", "thumbs": "up"}`, with
//! optional `"comment"` and `"source"` (default `api`).
//!
//! The request id must be one the gateway issued: either its row is in the database, or this
//! process accepted the row and it is still on its way. A row in the spill file (the database
//! is down) is known from the writer's list of spilled ids; a row queued for a batch is found
//! by writing what is queued (a flush, at most one batch insert) and looking again, so the
//! request path keeps no list of its own. Any other id is a 404. A row waiting in a spill file
//! that an earlier run left is unknown until it is replayed.

use serde::Deserialize;
use uuid::Uuid;

use super::{Feedback, LogHandle, LogStore, Store};
use crate::error::Error;

const MAX_COMMENT_CHARS: usize = 10_000;
const MAX_SOURCE_CHARS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    request_id: String,
    score: Option<f64>,
    thumbs: Option<String>,
    comment: Option<String>,
    source: Option<String>,
}

/// Checks a feedback body and turns it into a row; 400s name the offending field.
pub fn parse(bytes: &[u8]) -> Result<Feedback, Error> {
    let body: FeedbackBody = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("invalid feedback body: {e}")))?;
    let request_id = Uuid::parse_str(body.request_id.trim())
        .map_err(|_| Error::invalid_param("request_id", "`request_id` must be a request id (a UUID)"))?;
    let score = match (body.score, body.thumbs.as_deref()) {
        (Some(score), None) if (0.0..=1.0).contains(&score) => score,
        (Some(_), None) => return Err(Error::invalid_param("score", "`score` must be between 0 and 1")),
        (None, Some("up")) => 1.0,
        (None, Some("down")) => 0.0,
        (None, Some(_)) => return Err(Error::invalid_param("thumbs", "`thumbs` must be \"up\" or \"down\"")),
        (Some(_), Some(_)) => return Err(Error::invalid("give either `score` or `thumbs`, not both")),
        (None, None) => return Err(Error::invalid_param("score", "feedback needs a `score` or `thumbs`")),
    };
    let source = body.source.unwrap_or_else(|| "api".into());
    if source.is_empty() || source.chars().count() > MAX_SOURCE_CHARS {
        return Err(Error::invalid_param("source", "`source` must be 1 to 64 characters"));
    }
    if body.comment.as_ref().is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS) {
        return Err(Error::invalid_param("comment", "`comment` is longer than 10000 characters"));
    }
    Ok(Feedback {
        request_id,
        score,
        source: source.replace('\0', ""),
        comment: body.comment.map(|c| c.replace('\0', "")),
        created_at: super::now(),
    })
}

/// Parses, checks that the request exists and was made by the caller's tenant, and stores
/// the feedback. `caller_tenant` is `None` for the master key, which may rate any request;
/// `Some(None)` is a caller without a tenant (open access), which may rate only requests
/// made without one. A request of another tenant is answered like an unknown id, so that
/// ids do not leak across tenants.
pub async fn record(store: &Store, log: &LogHandle, caller_tenant: Option<Option<&str>>, bytes: &[u8]) -> Result<Feedback, Error> {
    let feedback = parse(bytes)?;
    let id = feedback.request_id;
    let row_tenant = match tenant_of(store, log, id).await? {
        Some(tenant) => Some(tenant),
        // Queued or in a batch being written: write it, then look again. A stopped writer
        // (shutdown) has written or spilled everything already.
        None => match log.flush().await {
            Ok(()) => tenant_of(store, log, id).await?,
            Err(_) => None,
        },
    };
    let allowed = match (&row_tenant, caller_tenant) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(row), Some(caller)) => row.as_deref() == caller,
    };
    if !allowed {
        return Err(Error::NotFound(format!("no request with id {id} for this key")));
    }
    store.insert_feedback(&feedback).await?;
    Ok(feedback)
}

/// The tenant of request `id` (`Some(None)`: made without one) from the spill list or the
/// database; `None` when neither has it.
async fn tenant_of(store: &Store, log: &LogHandle, id: Uuid) -> Result<Option<Option<String>>, Error> {
    match log.spilled_tenant(id) {
        Some(tenant) => Ok(Some(tenant)),
        None => store.request_tenant(id).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<&'static str> {
        match parse(body.as_bytes()) {
            Err(Error::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    const ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

    #[test]
    fn scores_and_thumbs() {
        let f = parse(format!(r#"{{"request_id":"{ID}","score":0.8}}"#).as_bytes()).ok();
        assert_eq!(f.as_ref().map(|f| f.score), Some(0.8));
        assert_eq!(f.map(|f| f.source), Some("api".to_owned()));
        let up = parse(format!(r#"{{"request_id":"{ID}","thumbs":"up","source":"user","comment":"nice"}}"#).as_bytes()).ok();
        assert_eq!(up.as_ref().map(|f| f.score), Some(1.0));
        assert_eq!(up.and_then(|f| f.comment), Some("nice".to_owned()));
        let down = parse(format!(r#"{{"request_id":"{ID}","thumbs":"down"}}"#).as_bytes()).ok();
        assert_eq!(down.map(|f| f.score), Some(0.0));
    }

    #[test]
    fn bad_bodies_are_400s() {
        assert_eq!(param_of(&format!(r#"{{"request_id":"{ID}","score":1.5}}"#)), Some("score"));
        assert_eq!(param_of(&format!(r#"{{"request_id":"{ID}","score":-0.1}}"#)), Some("score"));
        assert_eq!(param_of(&format!(r#"{{"request_id":"{ID}"}}"#)), Some("score"));
        assert_eq!(param_of(&format!(r#"{{"request_id":"{ID}","thumbs":"sideways"}}"#)), Some("thumbs"));
        assert_eq!(param_of(r#"{"request_id":"nope","score":0.5}"#), Some("request_id"));
        assert_eq!(param_of(&format!(r#"{{"request_id":"{ID}","score":0.5,"thumbs":"up"}}"#)), None);
        assert_eq!(param_of(r#"{"score":0.5}"#), None);
        assert_eq!(param_of("not json"), None);
    }
}
