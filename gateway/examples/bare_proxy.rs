//! The gateway's HTTP stack with nothing of the gateway in it: a reverse proxy built from the
//! same parts (Tokio, one single-threaded runtime per serving thread, hyper's HTTP/1 server,
//! hyper-util's pooled client with the gateway's settings) that forwards each request's path
//! and body to one upstream and passes the answer back as it comes. No routing, parsing,
//! cache, limits, log or metrics.
//!
//! `bench/load.sh` measures it beside the gateway (`REFERENCE_PROXY=stack`): the difference
//! is what the gateway's own work costs, and the difference to nginx (`REFERENCE_PROXY=nginx`)
//! is what this stack costs.
//!
//! cargo run --release -p gateway --example bare_proxy -- --listen 127.0.0.1:8090 \
//!     --upstream http://127.0.0.1:8081 [--threads 2]

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // benchmark harness: abort loudly

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use gateway::providers::http::{plain_client, PlainClient as UpstreamClient};
use hyper_util::rt::TokioIo;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

struct Args {
    listen: SocketAddr,
    /// `http://host:port`: each request's path is appended.
    upstream: String,
    threads: usize,
}

fn parse_args() -> Args {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().expect("--listen: an address")),
            "--upstream" => upstream = Some(value.trim_end_matches('/').to_owned()),
            "--threads" => threads = value.parse().expect("--threads: a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    Args { listen: listen.expect("--listen"), upstream: upstream.expect("--upstream"), threads: threads.max(1) }
}

async fn forward(client: &UpstreamClient, upstream: &str, request: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let bad_gateway = |why: String| {
        let body = Full::new(Bytes::from(why)).map_err(|never: Infallible| match never {}).boxed();
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    };
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return bad_gateway(format!("reading the request: {e}")),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = match format!("{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => return bad_gateway(format!("upstream URL: {e}")),
    };
    let mut upstream_request = Request::new(Full::new(body));
    *upstream_request.method_mut() = parts.method;
    *upstream_request.uri_mut() = uri;
    if let Some(content_type) = parts.headers.get(http::header::CONTENT_TYPE) {
        upstream_request.headers_mut().insert(http::header::CONTENT_TYPE, content_type.clone());
    }
    match client.request(upstream_request).await {
        Ok(response) => response.map(|body| body.boxed()),
        Err(e) => bad_gateway(format!("upstream: {e}")),
    }
}

fn main() {
    let args = parse_args();
    let listener = std::net::TcpListener::bind(args.listen).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let upstream: Arc<str> = args.upstream.into();
    let threads: Vec<_> = (0..args.threads)
        .map(|i| {
            let listener = listener.try_clone().expect("listener");
            let upstream = upstream.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    runtime.block_on(serve(listener, upstream));
                })
                .expect("thread")
        })
        .collect();
    for thread in threads {
        thread.join().expect("serving thread");
    }
}

/// Accepts on this thread's runtime; every connection and its upstream calls stay here.
async fn serve(listener: std::net::TcpListener, upstream: Arc<str>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    // The gateway's own plain-HTTP client, with its default connect timeout.
    let client = plain_client(gateway::config::ServerConfig::default().connect_timeout());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move { Ok::<_, Infallible>(forward(&client, &upstream, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
