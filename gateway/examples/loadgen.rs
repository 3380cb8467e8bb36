//! A small closed-loop (or fixed-rate) HTTP load generator for switchyard benchmarks.
//!
//! Unlike oha or wrk it can send a *fresh* prompt with every request (so the embedding cache
//! cannot help), and it reads the gateway's `x-switchyard-decision*` headers to report the
//! routing decision time. Prints one JSON object.
//!
//! cargo run --release -p gateway --example loadgen -- --url http://127.0.0.1:8080 \
//!     --model auto --connections 32 --seconds 10 --fresh-tokens 64

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // benchmark harness: abort loudly

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    url: String,
    model: String,
    connections: usize,
    seconds: f64,
    /// Approximate prompt length in tokens for fresh prompts; 0 sends `prompt`.
    fresh_tokens: usize,
    /// The fixed prompt (a paraphrase of a cached one measures semantic hits).
    prompt: String,
    /// Total requests per second across connections (0: as fast as possible).
    rate: f64,
    stream: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:8080".into(),
        model: "auto".into(),
        connections: 32,
        seconds: 10.0,
        fresh_tokens: 0,
        prompt: "Say hello".into(),
        rate: 0.0,
        stream: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--url" => args.url = value(),
            "--model" => args.model = value(),
            "--connections" => args.connections = value().parse().unwrap_or(32),
            "--seconds" => args.seconds = value().parse().unwrap_or(10.0),
            "--fresh-tokens" => args.fresh_tokens = value().parse().unwrap_or(0),
            "--prompt" => args.prompt = value(),
            "--rate" => args.rate = value().parse().unwrap_or(0.0),
            "--stream" => args.stream = true,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

const WORDS: &[&str] = &[
    "explain", "how", "to", "implement", "a", "parser", "for", "JSON", "in", "Rust", "with", "error",
    "recovery", "and", "what", "is", "the", "best", "way", "cook", "pasta", "tomato", "sauce", "history",
    "of", "Rome", "write", "poem", "about", "autumn", "leaves", "compare", "Python", "Go", "concurrency",
    "models", "why", "sky", "blue", "summarise", "this", "article", "on", "climate", "policy", "translate",
    "sentence", "into", "French", "debug", "my", "SQL", "query", "joins", "orders", "customers", "plan",
    "trip", "Japan", "budget", "travel", "tips", "prove", "that", "square", "root", "two", "irrational",
];

/// A prompt of ~`tokens` tokens that was never sent before: numbered by a counter, its words
/// drawn from the counter mixed with a per-run `salt`.
fn fresh_prompt(tokens: usize, n: u64, salt: u64) -> String {
    let mut state = (n ^ salt).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut words = Vec::with_capacity(tokens);
    words.push(format!("Request {n}:"));
    for _ in 0..tokens.saturating_sub(3) {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        words.push(WORDS[(state >> 33) as usize % WORDS.len()].to_owned());
    }
    words.join(" ")
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    decision_ms: Vec<f64>,
    /// Decision times by decision kind (`selected` ones are the model's own speed; `shed`
    /// ones sit at the deadline).
    decision_ms_by_kind: BTreeMap<String, Vec<f64>>,
    decisions: BTreeMap<String, u64>,
    models: BTreeMap<String, u64>,
    /// `x-switchyard-cache` values seen.
    cache: BTreeMap<String, u64>,
    errors: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    // Salted by the clock so consecutive runs against one gateway send different prompts (its
    // embedding cache must not answer a second run from the first).
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let (args, client, counter) = (args.clone(), client.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
            let mut next = Instant::now() + interval.map(|i| i.mul_f64(connection as f64 / args.connections as f64)).unwrap_or_default();
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                    next += interval;
                }
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let prompt = if args.fresh_tokens > 0 { fresh_prompt(args.fresh_tokens, n, salt) } else { args.prompt.clone() };
                let body = json!({"model": args.model, "stream": args.stream, "messages": [{"role": "user", "content": prompt}]});
                let sent = Instant::now();
                let result = client.post(format!("{}/v1/chat/completions", args.url)).json(&body).send().await;
                match result {
                    Ok(response) if response.status().is_success() => {
                        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let decision = header("x-switchyard-decision");
                        let decision_ms = header("x-switchyard-decision-ms").and_then(|v| v.parse::<f64>().ok());
                        let model = header("x-switchyard-model");
                        let cache = header("x-switchyard-cache");
                        if response.bytes().await.is_err() {
                            tally.errors += 1;
                            continue;
                        }
                        tally.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                        if let (Some(d), Some(ms)) = (&decision, decision_ms) {
                            tally.decision_ms_by_kind.entry(d.clone()).or_default().push(ms);
                        }
                        if let Some(d) = decision {
                            *tally.decisions.entry(d).or_default() += 1;
                        }
                        if let Some(m) = model {
                            *tally.models.entry(m).or_default() += 1;
                        }
                        if let Some(c) = cache {
                            *tally.cache.entry(c).or_default() += 1;
                        }
                        if let Some(ms) = decision_ms {
                            tally.decision_ms.push(ms);
                        }
                    }
                    _ => tally.errors += 1,
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.expect("task");
        total.latencies_ms.extend(tally.latencies_ms);
        total.decision_ms.extend(tally.decision_ms);
        total.errors += tally.errors;
        for (k, v) in tally.decision_ms_by_kind {
            total.decision_ms_by_kind.entry(k).or_default().extend(v);
        }
        for (k, v) in tally.decisions {
            *total.decisions.entry(k).or_default() += v;
        }
        for (k, v) in tally.models {
            *total.models.entry(k).or_default() += v;
        }
        for (k, v) in tally.cache {
            *total.cache.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies_ms.sort_by(f64::total_cmp);
    total.decision_ms.sort_by(f64::total_cmp);
    let by_kind: BTreeMap<&str, serde_json::Value> = total
        .decision_ms_by_kind
        .iter_mut()
        .map(|(kind, times)| {
            times.sort_by(f64::total_cmp);
            (kind.as_str(), json!({"p50": percentile(times, 0.5), "p99": percentile(times, 0.99)}))
        })
        .collect();
    let summary = json!({
        "model": args.model,
        "connections": args.connections,
        "fresh_tokens": args.fresh_tokens,
        "rate_target": args.rate,
        "seconds": elapsed,
        "ok": total.latencies_ms.len(),
        "errors": total.errors,
        "rps": total.latencies_ms.len() as f64 / elapsed,
        "latency_ms": {"p50": percentile(&total.latencies_ms, 0.5), "p99": percentile(&total.latencies_ms, 0.99)},
        "decision_ms": {"p50": percentile(&total.decision_ms, 0.5), "p99": percentile(&total.decision_ms, 0.99)},
        "decision_ms_by_kind": by_kind,
        "decisions": total.decisions,
        "models": total.models,
        "cache": total.cache,
    });
    println!("{summary}");
}
