//! The outcome row: the contract between the gateway, which writes one row per request to
//! `request_log`, and training, which learns from those rows.
//!
//! Both sides use these types, so a field renamed here is renamed for both. The `candidates`
//! column holds a [`DecisionRecord`] as JSON; reading one with an unknown field, or without a
//! field the selector learns from, is an error, never a silent zero.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One row of `request_log` (and of the gateway's spill file while the database is away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct OutcomeRow {
    /// The request id clients see (UUIDv7, so rows sort by time).
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub tenant: Option<String>,
    pub key_id: Option<Uuid>,
    pub route: Option<String>,
    pub provider: String,
    pub model: String,
    pub stream: bool,
    /// How the model was chosen, with every candidate's predictions and failed attempts.
    #[cfg_attr(feature = "sqlx", sqlx(json(nullable)))]
    pub candidates: Option<DecisionRecord>,
    /// Probability the policy gave the chosen model (for off-policy training).
    pub propensity: Option<f64>,
    pub checkpoint_version: Option<String>,
    pub shadow_choice: Option<String>,
    /// Hex blake3 of the prompt.
    pub prompt_hash: Option<String>,
    /// The query embedding as f32 little-endian bytes (see [`embedding_to_bytes`]), so that
    /// training need not embed the prompts again.
    #[serde(default, with = "hex_bytes")]
    pub embedding: Option<Vec<u8>>,
    pub prompt_text: Option<String>,
    /// The answer of a non-stream request (only with `store_prompts`), for `switchyard judge`.
    #[serde(default)]
    pub answer_text: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub first_token_ms: Option<f64>,
    pub status: i32,
    pub error_class: Option<String>,
    pub cache_result: Option<String>,
}

/// Columns of `request_log`, in the order [`OutcomeRow`] declares them: the gateway inserts
/// and selects these, training selects them.
pub const COLUMNS: &[&str] = &[
    "id",
    "created_at",
    "tenant",
    "key_id",
    "route",
    "provider",
    "model",
    "stream",
    "candidates",
    "propensity",
    "checkpoint_version",
    "shadow_choice",
    "prompt_hash",
    "embedding",
    "prompt_text",
    "answer_text",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "first_token_ms",
    "status",
    "error_class",
    "cache_result",
];

/// The `candidates` column: what the router decided and what the call path tried.
///
/// A route's row has `decision`, `scores` and the rest; a request for a model named directly
/// has only `failed_attempts` when its first try failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// `selected`, `explored`, `shed`, `default` (routes) or `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// The trade-off the decision was made for, as `quality=…,cost=…,latency=…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tradeoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_ms: Option<f64>,
    /// Every candidate the selector scored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<ScoredCandidate>,
    /// Version of the shadow checkpoint that scored the request beside the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_version: Option<String>,
    /// Tries before the one that answered (or all of them, for a failed request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
}

/// One candidate as the policy saw it. The predictions are required: training compares a new
/// policy with the logged one on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoredCandidate {
    /// The configured model name.
    pub model: String,
    pub quality: f64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub utility: f64,
    /// Probability the policy gave this candidate (0 when a cost ceiling removed it).
    pub probability: f64,
    /// The model's price when the decision was made.
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

/// A try that did not answer: skipped (breaker open, bulkhead full) or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedAttempt {
    pub model: String,
    /// Why the model was not tried (`breaker_open_or_cooldown`, `bulkhead_full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The error's class (`upstream_5xx`, `upstream_timeout`, …) when it was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// 0 for the first try of this model, then 1, 2, … for same-model retries.
    #[serde(default)]
    pub retry: u32,
}

/// The embedding as stored: f32 little-endian, 4 bytes per dimension.
pub fn embedding_to_bytes(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inverse of [`embedding_to_bytes`]; `None` for an empty blob or one whose length is not a
/// whole number of f32s.
pub fn embedding_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    (!bytes.is_empty() && bytes.len().is_multiple_of(4)).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// `embedding` as hex text in JSON (the spill file), raw bytes in the database.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => {
                let mut text = String::with_capacity(bytes.len() * 2);
                for b in bytes {
                    text.push(char::from(HEX[usize::from(b >> 4)]));
                    text.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                serializer.serialize_some(&text)
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
        text.as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [hi, lo] => Some((digit(*hi)? << 4) | digit(*lo)?),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("invalid hex in `embedding`"))
    }

    const HEX: &[u8; 16] = b"0123456789abcdef";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(model: &str) -> ScoredCandidate {
        ScoredCandidate {
            model: model.into(),
            quality: 0.8,
            cost_usd: 0.001,
            latency_ms: 900.0,
            utility: 0.75,
            probability: 0.9,
            input_usd_per_mtok: 10.0,
            output_usd_per_mtok: 30.0,
        }
    }

    #[test]
    fn a_decision_round_trips_through_json() {
        let record = DecisionRecord {
            decision: Some("explored".into()),
            tradeoff: Some("quality=1,cost=0.1,latency=0".into()),
            decision_ms: Some(3.5),
            scores: vec![scored("a"), scored("b")],
            shadow_version: None,
            failed_attempts: vec![FailedAttempt {
                model: "a".into(),
                skipped: None,
                error_class: Some("upstream_5xx".into()),
                latency_ms: Some(12.0),
                retry: 1,
            }],
        };
        let text = serde_json::to_string(&record).expect("serialises");
        assert_eq!(serde_json::from_str::<DecisionRecord>(&text).expect("parses"), record);
    }

    #[test]
    fn unknown_and_missing_fields_are_errors() {
        let unknown = r#"{"decision":"selected","scores":[],"quailty":1}"#;
        assert!(serde_json::from_str::<DecisionRecord>(unknown).is_err());
        // A candidate without its utility (e.g. the field renamed) must not read as 0.
        let missing = r#"{"scores":[{"model":"a","quality":0.5,"cost_usd":0,"latency_ms":1,
            "probability":1,"input_usd_per_mtok":1,"output_usd_per_mtok":1}]}"#;
        assert!(serde_json::from_str::<DecisionRecord>(missing).is_err());
        // The list form of older builds is refused rather than guessed at.
        let list = r#"[{"model":"a","quality":0.5,"cost_usd":0,"latency_ms":1,"utility":0.5}]"#;
        assert!(serde_json::from_str::<DecisionRecord>(list).is_err());
    }

    #[test]
    fn embeddings_round_trip_as_bytes() {
        let v = [0.1f32, -2.5, 1e-7];
        assert_eq!(embedding_from_bytes(&embedding_to_bytes(&v)), Some(v.to_vec()));
        assert_eq!(embedding_from_bytes(&[1, 2, 3]), None);
        assert_eq!(embedding_from_bytes(&[]), None);
    }
}
