//! The HTTP client for upstream calls.
//!
//! Plain `http://` upstreams (local model servers such as vLLM or Ollama, sidecars, the mock)
//! are called through hyper's pooled client directly: that is where the gateway's own cost per
//! request shows, and reqwest's layers (it parses the URL two or three times per request, for
//! its redirect policy and for the response) were about a sixth of the gateway's CPU per
//! request against a static upstream. `https://` upstreams, and every upstream when a proxy is
//! set in the environment, go through reqwest: TLS, HTTP/2 by ALPN and the proxy settings.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::Error;

/// Both clients, sharing nothing but their settings. Cloning is a reference-count increment.
#[derive(Clone)]
pub struct UpstreamClient {
    tls: reqwest::Client,
    /// `None` when a proxy is configured: then every call goes through reqwest.
    plain: Option<PlainClient>,
}

/// The pooled hyper client for plain `http://` upstreams (also what `examples/bare_proxy`
/// measures the stack with): keep-alive connections without Nagle, idle ones kept 90 s.
pub fn plain_client(connect_timeout: Duration) -> PlainClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// The plain-HTTP client's type: requests carry their whole body.
pub type PlainClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// Environment variables that make reqwest use a proxy for `http://` URLs.
const PLAIN_PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Result<Self, Error> {
        Self::build(connect_timeout, !proxy_set(|name| std::env::var_os(name)))
    }

    /// With `plain` false, every call goes through reqwest.
    fn build(connect_timeout: Duration, plain: bool) -> Result<Self, Error> {
        let tls = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let plain = plain.then(|| plain_client(connect_timeout));
        Ok(Self { tls, plain })
    }

    /// The reqwest client, for calls off the request path (readiness probes).
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.tls
    }

    /// Sends a POST of `body` to `url` with `headers`.
    pub async fn post(&self, url: &reqwest::Url, headers: HeaderMap, body: Bytes) -> Result<UpstreamHttpResponse, SendError> {
        if let (Some(plain), "http") = (&self.plain, url.scheme()) {
            let uri = http::Uri::try_from(url.as_str()).map_err(|e| SendError::Other(format!("invalid upstream URL: {e}")))?;
            let mut request = http::Request::post(uri)
                .body(Full::new(body))
                .map_err(|e| SendError::Other(format!("invalid upstream request: {e}")))?;
            *request.headers_mut() = headers;
            return match plain.request(request).await {
                Ok(response) => Ok(UpstreamHttpResponse::Plain(response)),
                Err(e) if e.is_connect() && has_timed_out(&e) => Err(SendError::TimedOut(error_chain(&e))),
                Err(e) => Err(SendError::Other(error_chain(&e))),
            };
        }
        match self.tls.post(url.clone()).headers(headers).body(body).send().await {
            Ok(response) => Ok(UpstreamHttpResponse::Tls(response)),
            Err(e) if e.is_timeout() => Err(SendError::TimedOut(e.to_string())),
            Err(e) => Err(SendError::Other(error_chain(&e))),
        }
    }
}

/// Whether the environment (`lookup`) sets a proxy for `http://` URLs.
fn proxy_set(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    PLAIN_PROXY_VARS.iter().any(|name| lookup(name).is_some_and(|value| !value.is_empty()))
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    TimedOut(String),
    Other(String),
}

/// An upstream's response from either client.
pub enum UpstreamHttpResponse {
    Plain(http::Response<hyper::body::Incoming>),
    Tls(reqwest::Response),
}

impl UpstreamHttpResponse {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Plain(response) => response.status(),
            Self::Tls(response) => response.status(),
        }
    }

    pub fn header(&self, name: http::header::HeaderName) -> Option<&HeaderValue> {
        match self {
            Self::Plain(response) => response.headers().get(name),
            Self::Tls(response) => response.headers().get(name),
        }
    }

    /// The next body chunk; `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Self::Plain(response) => loop {
                match response.body_mut().frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(error_chain(&e)),
                    Some(Ok(frame)) => {
                        // Trailers carry no body bytes.
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
            Self::Tls(response) => response.chunk().await.map_err(|e| error_chain(&e)),
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, String> {
        match self {
            Self::Plain(response) => response.into_body().collect().await.map(|body| body.to_bytes()).map_err(|e| error_chain(&e)),
            Self::Tls(response) => response.bytes().await.map_err(|e| error_chain(&e)),
        }
    }
}

/// Whether a connect error was the connect timeout.
fn has_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error with its causes, `a: b: c`, as transport errors say little on their own.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::post;
    use serde_json::{json, Value};

    use super::*;

    /// An upstream on loopback: `/echo` answers with the headers and body it got, `/chunks`
    /// sends its answer in three pieces with a pause between them, `/teapot` answers 418.
    async fn upstream() -> SocketAddr {
        let app = axum::Router::new()
            .route(
                "/echo",
                post(|headers: HeaderMap, body: Bytes| async move {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    axum::Json(json!({
                        "content_type": header("content-type"),
                        "host": header("host"),
                        "x_test": header("x-test"),
                        "body": String::from_utf8_lossy(&body),
                    }))
                }),
            )
            .route(
                "/chunks",
                post(|| async {
                    let pieces = futures_util::stream::unfold(0, |i| async move {
                        if i == 3 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Some((Ok::<_, std::convert::Infallible>(Bytes::from(format!("piece {i};"))), i + 1))
                    });
                    axum::body::Body::from_stream(pieces)
                }),
            )
            .route("/teapot", post(|| async { (StatusCode::IM_A_TEAPOT, [(http::header::RETRY_AFTER, "7")], "short and stout") }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        addr
    }

    fn clients() -> [(&'static str, UpstreamClient); 2] {
        let timeout = Duration::from_secs(2);
        [("hyper", UpstreamClient::build(timeout, true).expect("client")), ("reqwest", UpstreamClient::build(timeout, false).expect("client"))]
    }

    fn url(addr: SocketAddr, path: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://{addr}{path}")).expect("url")
    }

    #[tokio::test]
    async fn both_clients_send_the_same_request_and_read_the_same_answer() {
        let addr = upstream().await;
        for (name, client) in clients() {
            assert_eq!(client.plain.is_some(), name == "hyper");
            let mut headers = HeaderMap::new();
            headers.insert("x-test", HeaderValue::from_static("yes"));
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let response = client.post(&url(addr, "/echo"), headers, Bytes::from_static(b"{\"q\":1}")).await.expect(name);
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let got: Value = serde_json::from_slice(&response.bytes().await.expect(name)).expect(name);
            let expected = json!({"content_type": "application/json", "host": addr.to_string(), "x_test": "yes", "body": "{\"q\":1}"});
            assert_eq!(got, expected, "{name}");
        }
    }

    #[tokio::test]
    async fn both_clients_hand_over_a_body_as_it_arrives() {
        let addr = upstream().await;
        for (name, client) in clients() {
            let mut response = client.post(&url(addr, "/chunks"), HeaderMap::new(), Bytes::new()).await.expect(name);
            let mut pieces = Vec::new();
            while let Some(chunk) = response.chunk().await.expect(name) {
                pieces.push(String::from_utf8_lossy(&chunk).into_owned());
            }
            // The pauses keep the pieces apart: each is handed over on its own.
            assert_eq!(pieces, ["piece 0;", "piece 1;", "piece 2;"], "{name}");
        }
    }

    #[tokio::test]
    async fn both_clients_keep_an_error_status_and_its_headers() {
        let addr = upstream().await;
        for (name, client) in clients() {
            let response = client.post(&url(addr, "/teapot"), HeaderMap::new(), Bytes::new()).await.expect(name);
            assert_eq!(response.status(), StatusCode::IM_A_TEAPOT, "{name}");
            assert_eq!(response.header(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("7"), "{name}");
            assert_eq!(&response.bytes().await.expect(name)[..], b"short and stout", "{name}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_says_why() {
        // A port that was free a moment ago: nothing listens there.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        for (name, client) in clients() {
            match client.post(&url(addr, "/echo"), HeaderMap::new(), Bytes::new()).await {
                Err(SendError::Other(message)) => assert!(message.to_lowercase().contains("refused"), "{name}: {message}"),
                Err(other) => panic!("{name}: {other:?}"),
                Ok(_) => panic!("{name}: an answer from nowhere"),
            }
        }
    }

    #[test]
    fn a_proxy_in_the_environment_sends_every_call_through_reqwest() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| set.iter().find(|(n, _)| *n == name).map(|(_, v)| std::ffi::OsString::from(v))
        };
        assert!(!proxy_set(env(&[])));
        assert!(!proxy_set(env(&[("HTTP_PROXY", "")])));
        assert!(!proxy_set(env(&[("HTTPS_PROXY", "http://proxy:3128")])), "https only: plain calls stay direct");
        assert!(proxy_set(env(&[("http_proxy", "http://proxy:3128")])));
        assert!(proxy_set(env(&[("ALL_PROXY", "socks5://proxy:1080")])));
    }
}
