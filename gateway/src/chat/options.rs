//! The client's per-request headers, read and checked in one place before anything is looked
//! up, so that a malformed header is refused the same way on every path.

use std::time::Duration;

use axum::http::HeaderMap;

use crate::error::Error;
use crate::providers::CallTimeouts;
use crate::registry::RouteEntry;
use crate::routing::{parse_tradeoff, RequestPolicy, Tradeoff};

/// Per-request trade-off: a preset or `quality=1,cost=0.5,latency=0.1` (routes).
pub const HEADER_TRADEOFF: &str = "x-switchyard-tradeoff";
/// Per-request ceiling on the predicted cost of the answer, in USD (routes).
pub const HEADER_MAX_COST: &str = "x-switchyard-max-cost-usd";
/// Per-request first-byte timeout in ms; clamped to the route's (or server's) value.
pub const HEADER_TIMEOUT: &str = "x-switchyard-timeout-ms";

/// What the client's headers ask of this request.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Trade-off and cost ceiling (routes only; a named model ignores them).
    pub policy: RequestPolicy,
    pub timeouts: CallTimeouts,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            policy: RequestPolicy::default(),
            timeouts: CallTimeouts { first_byte: Duration::ZERO, body: Duration::ZERO },
        }
    }
}

impl ClientOptions {
    pub fn from_headers(headers: &HeaderMap, route: Option<&RouteEntry>, server: CallTimeouts) -> Result<Self, Error> {
        let policy = match route {
            Some(_) => request_policy(headers)?,
            None => RequestPolicy::default(),
        };
        Ok(Self { policy, timeouts: request_timeouts(server, route, headers)? })
    }
}

/// The upstream timeouts for one request: the route's overrides of the server's, then the
/// client's `x-switchyard-timeout-ms`, which may shorten the first-byte wait but never
/// lengthen it (a client must not hold upstream connections longer than the operator allows).
fn request_timeouts(server: CallTimeouts, route: Option<&RouteEntry>, headers: &HeaderMap) -> Result<CallTimeouts, Error> {
    let mut timeouts = server;
    if let Some(route) = route {
        timeouts.first_byte = route.first_byte_timeout.unwrap_or(timeouts.first_byte);
        timeouts.body = route.request_timeout.unwrap_or(timeouts.body);
    }
    if let Some(value) = headers.get(HEADER_TIMEOUT) {
        let asked = value
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| Error::invalid_param(HEADER_TIMEOUT, format!("{HEADER_TIMEOUT} must be a positive whole number of milliseconds")))?;
        timeouts.first_byte = timeouts.first_byte.min(Duration::from_millis(asked));
    }
    Ok(timeouts)
}

/// Reads the per-request routing headers.
fn request_policy(headers: &HeaderMap) -> Result<RequestPolicy, Error> {
    let text = |name: &'static str| headers.get(name).map(|v| v.to_str().map_err(|_| Error::invalid_param(name, format!("{name} is not text"))));
    let tradeoff = match text(HEADER_TRADEOFF) {
        Some(t) => Some(parse_tradeoff(t?, Tradeoff::BALANCED).map_err(|e| Error::invalid_param(HEADER_TRADEOFF, e.to_string()))?),
        None => None,
    };
    let max_cost_usd = match text(HEADER_MAX_COST) {
        Some(t) => match t?.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => return Err(Error::invalid_param(HEADER_MAX_COST, format!("{HEADER_MAX_COST} must be a non-negative number"))),
        },
        None => None,
    };
    Ok(RequestPolicy { tradeoff, max_cost_usd })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    const SERVER: CallTimeouts = CallTimeouts { first_byte: Duration::from_secs(30), body: Duration::from_secs(300) };

    #[test]
    fn a_client_timeout_only_shortens_the_wait() {
        let options = ClientOptions::from_headers(&headers(&[(HEADER_TIMEOUT, "250")]), None, SERVER).expect("valid");
        assert_eq!(options.timeouts.first_byte, Duration::from_millis(250));
        let options = ClientOptions::from_headers(&headers(&[(HEADER_TIMEOUT, "999999")]), None, SERVER).expect("valid");
        assert_eq!(options.timeouts.first_byte, SERVER.first_byte);
        for bad in ["0", "-5", "soon"] {
            assert!(ClientOptions::from_headers(&headers(&[(HEADER_TIMEOUT, bad)]), None, SERVER).is_err(), "{bad}");
        }
    }

    #[test]
    fn routing_headers_are_checked() {
        assert!(request_policy(&headers(&[(HEADER_TRADEOFF, "quality=1,cost=nope")])).is_err());
        assert!(request_policy(&headers(&[(HEADER_MAX_COST, "-1")])).is_err());
        let policy = request_policy(&headers(&[(HEADER_TRADEOFF, "cheap"), (HEADER_MAX_COST, "0.01")])).expect("valid");
        assert_eq!(policy.max_cost_usd, Some(0.01));
        assert!(policy.tradeoff.is_some());
    }
}
