//! The gateway's one error type, rendered as the OpenAI error body.
//!
//! Every failure a client can see goes through [`Error::into_response`], so the status code
//! and the `{"error":{"message","type","param","code"}}` shape are decided in one place.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not valid JSON or lacks a required field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    /// The caller's key has a model allow-list without this model or route.
    #[error("this key may not use the model `{0}`")]
    ModelNotAllowed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// A per-key or per-tenant limit (see [`crate::limits`]) refused the request.
    #[error("{} limit of this {scope} reached; retry in {retry_after_secs} s", kind.as_str())]
    LimitExceeded {
        kind: LimitKind,
        scope: &'static str,
        retry_after_secs: u64,
    },
    /// The gateway is shutting down and its grace period for open streams is over.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The shared limiter (Redis) could not be asked.
    #[error("rate limiter unavailable: {0}")]
    LimiterUnavailable(String),
    /// The upstream answered with an error; its status and message are kept.
    #[error("{message}")]
    Upstream {
        status: StatusCode,
        message: String,
        kind: String,
        code: Option<String>,
        retry_after: Option<HeaderValue>,
    },
    /// The upstream could not be reached or sent something we cannot use.
    #[error("upstream error: {0}")]
    BadGateway(String),
    #[error("upstream timed out: {0}")]
    GatewayTimeout(String),
    /// No upstream may be tried now (every candidate's breaker is open or cooling down).
    #[error("{0}")]
    Unavailable(String),
    #[error("configuration error: {0}")]
    Config(String),
    /// The outcome log / key database could not be used. The request path only meets this
    /// for key lookups and feedback; outcome rows never wait on the database.
    #[error("database unavailable while {context}: {source}")]
    Database {
        context: &'static str,
        source: Arc<sqlx::Error>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a limit that refused a request counts (see [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Budget,
}

impl LimitKind {
    /// Label value in metrics and the error message.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "rpm",
            Self::Tokens => "tpm",
            Self::Budget => "budget",
        }
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnknownModel(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::LimitExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::LimiterUnavailable(_) | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { status, .. } => *status,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Config(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short class for logs and metrics (`invalid_request`, `upstream_5xx`, …).
    pub fn class(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Unauthorized => "unauthorized",
            Self::UnknownModel(_) => "unknown_model",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::NotFound(_) => "not_found",
            Self::RateLimited { .. } => "rate_limited",
            Self::LimitExceeded { kind: LimitKind::Budget, .. } => "budget_exceeded",
            Self::LimitExceeded { .. } => "rate_limit_exceeded",
            Self::LimiterUnavailable(_) => "limiter_unavailable",
            Self::ShuttingDown => "shutdown",
            Self::Upstream { status, .. } if status.as_u16() == 429 => "upstream_429",
            Self::Upstream { status, .. } if status.is_server_error() => "upstream_5xx",
            Self::Upstream { .. } => "upstream_4xx",
            Self::BadGateway(_) => "upstream_unreachable",
            Self::GatewayTimeout(_) => "upstream_timeout",
            Self::Unavailable(_) => "circuit_open",
            Self::Config(_) => "config",
            Self::Database { .. } => "database",
            Self::Internal(_) => "internal",
        }
    }

    /// The `Retry-After` a client should honour, if the error has one.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Self::RateLimited { retry_after_secs: Some(secs), .. } => HeaderValue::from_str(&secs.to_string()).ok(),
            Self::LimitExceeded { retry_after_secs, .. } => HeaderValue::from_str(&retry_after_secs.to_string()).ok(),
            Self::Upstream { retry_after, .. } => retry_after.clone(),
            _ => None,
        }
    }

    /// The OpenAI error object: `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (kind, param, code): (&str, Option<&str>, Option<&str>) = match self {
            Self::InvalidRequest { param, .. } => ("invalid_request_error", *param, None),
            Self::PayloadTooLarge { .. } => {
                ("invalid_request_error", None, Some("request_too_large"))
            }
            Self::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            Self::UnknownModel(_) => ("invalid_request_error", Some("model"), Some("model_not_found")),
            Self::ModelNotAllowed(_) => ("permission_error", Some("model"), Some("model_not_allowed")),
            Self::NotFound(_) => ("invalid_request_error", None, Some("not_found")),
            Self::RateLimited { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            Self::LimitExceeded { kind: LimitKind::Budget, .. } => {
                ("rate_limit_exceeded", None, Some("budget_exceeded"))
            }
            Self::LimitExceeded { .. } => ("rate_limit_exceeded", None, Some("rate_limit_exceeded")),
            Self::LimiterUnavailable(_) => ("api_error", None, Some("limiter_unavailable")),
            Self::ShuttingDown => ("api_error", None, Some("shutting_down")),
            Self::Upstream { kind, code, .. } => (kind.as_str(), None, code.as_deref()),
            Self::BadGateway(_) => ("api_error", None, Some("upstream_unreachable")),
            Self::GatewayTimeout(_) => ("api_error", None, Some("upstream_timeout")),
            Self::Unavailable(_) => ("api_error", None, Some("circuit_open")),
            Self::Database { .. } => ("api_error", None, Some("database_unavailable")),
            Self::Config(_) | Self::Internal(_) => ("api_error", None, None),
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(class = self.class(), error = %self, "request failed");
        } else {
            tracing::debug!(class = self.class(), error = %self, "request rejected");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(value) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let body = Error::UnknownModel("nope".into()).body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("nope"));
    }
}
