//! OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, Groq, Together, the mock…).
//!
//! The client's body goes upstream as it came, with two changes: `model` becomes the
//! upstream's model name, and a stream always asks for usage so every request can be costed.
//! Stream events are forwarded byte for byte except the usage-only chunk the client did not
//! ask for.

use std::sync::LazyLock;

use bytes::Bytes;
use http::HeaderMap;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::{post_json, post_payload, read_body, secret_header, CallTimeouts, StreamPiece, UpstreamChunks, UpstreamClient, UpstreamHttpResponse, UpstreamResponse};
use crate::error::Error;
use crate::openai::{usage_of, ChatRequest, Usage};
use crate::sse::{self, SseParser};

pub struct OpenAiProvider {
    endpoints: Endpoints,
    /// Authorization and configured headers, built once.
    headers: HeaderMap,
    /// Forward the client's `x-mock-*` headers (fault injection for the mock upstream).
    forward_mock_headers: bool,
}

/// The upstream APIs the gateway calls.
#[derive(Debug, Clone, Copy)]
enum Api {
    ChatCompletions,
    Embeddings,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// Where the APIs are.
enum Endpoints {
    /// `{base_url}/chat/completions` and `{base_url}/embeddings`, parsed once.
    Fixed { completions: reqwest::Url, embeddings: reqwest::Url },
    /// Azure OpenAI: a URL per deployment (the model's `upstream_model`), built per call.
    Azure { base: String, api_version: String },
}

impl Endpoints {
    fn url(&self, api: Api, deployment: &str) -> Result<reqwest::Url, Error> {
        match (self, api) {
            (Self::Fixed { completions, .. }, Api::ChatCompletions) => Ok(completions.clone()),
            (Self::Fixed { embeddings, .. }, Api::Embeddings) => Ok(embeddings.clone()),
            (Self::Azure { base, api_version }, _) => {
                let mut url = reqwest::Url::parse(&format!("{base}/openai/deployments/{deployment}/{}", api.path()))
                    .map_err(|e| Error::Internal(format!("Azure URL for deployment `{deployment}`: {e}")))?;
                url.query_pairs_mut().append_pair("api-version", api_version);
                Ok(url)
            }
        }
    }
}

impl OpenAiProvider {
    pub fn new(base_url: &str, api_key: Option<&str>, headers: HeaderMap, forward_mock_headers: bool) -> Result<Self, Error> {
        let mut headers = headers;
        if let Some(key) = api_key {
            headers.insert(http::header::AUTHORIZATION, secret_header(&format!("Bearer {key}"))?);
        }
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{}/{path}", base_url.trim_end_matches('/')))
                .map_err(|e| Error::Config(format!("invalid base_url `{base_url}`: {e}")))
        };
        Ok(Self {
            endpoints: Endpoints::Fixed { completions: endpoint(Api::ChatCompletions.path())?, embeddings: endpoint(Api::Embeddings.path())? },
            headers,
            forward_mock_headers,
        })
    }

    /// Azure OpenAI at `base_url` (`https://RESOURCE.openai.azure.com`), key in `api-key`.
    pub fn azure(base_url: &str, api_version: &str, api_key: Option<&str>, headers: HeaderMap) -> Result<Self, Error> {
        let mut headers = headers;
        if let Some(key) = api_key {
            headers.insert(http::HeaderName::from_static("api-key"), secret_header(key)?);
        }
        let base = base_url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base).map_err(|e| Error::Config(format!("invalid base_url `{base_url}`: {e}")))?;
        Ok(Self { endpoints: Endpoints::Azure { base, api_version: api_version.to_owned() }, headers, forward_mock_headers: false })
    }

    pub async fn chat(
        &self,
        http: &UpstreamClient,
        request: &ChatRequest,
        upstream_model: &str,
        extra_headers: &HeaderMap,
        timeouts: CallTimeouts,
    ) -> Result<UpstreamResponse, Error> {
        let body = upstream_body(request, upstream_model);
        let url = self.endpoints.url(Api::ChatCompletions, upstream_model)?;
        let response = post_payload(http, &url, self.headers_for(extra_headers), body, timeouts).await?;
        if !request.stream {
            let body = read_body(response, timeouts.body).await?;
            let usage = usage_of(&body);
            return Ok(UpstreamResponse::Json { body, usage });
        }
        Ok(UpstreamResponse::Stream(Box::pin(forward_stream(response, timeouts))))
    }

    /// `POST {base_url}/embeddings` with the client's body (model already rewritten).
    pub async fn embeddings(
        &self,
        http: &UpstreamClient,
        body: &serde_json::Map<String, Value>,
        extra_headers: &HeaderMap,
        timeouts: CallTimeouts,
    ) -> Result<Bytes, Error> {
        let deployment = body.get("model").and_then(Value::as_str).unwrap_or_default();
        let url = self.endpoints.url(Api::Embeddings, deployment)?;
        let response = post_json(http, &url, self.headers_for(extra_headers), body, timeouts).await?;
        read_body(response, timeouts.body).await
    }

    /// The provider's headers (and the mock's fault headers, for the mock).
    fn headers_for(&self, extra_headers: &HeaderMap) -> HeaderMap {
        let mut headers = self.headers.clone();
        if self.forward_mock_headers {
            for (name, value) in extra_headers {
                if name.as_str().starts_with("x-mock-") {
                    headers.append(name, value.clone());
                }
            }
        }
        headers
    }
}

/// The client's body as the upstream gets it: `model` is the upstream's name and a stream
/// asks for usage (`stream_options.include_usage`). Every other member is copied as the client
/// wrote it, byte for byte (numbers, key order and unknown fields untouched). A parsed request
/// always has a `model` member.
pub fn upstream_body(request: &ChatRequest, model: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(request.raw_len() + model.len() + 48);
    out.push(b'{');
    let mut has_stream_options = false;
    for member in request.members() {
        if out.len() > 1 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(member.key);
        out.extend_from_slice(b"\":");
        if member.is("model") {
            write_json(&mut out, model);
        } else if member.is("stream_options") && request.stream {
            has_stream_options = true;
            if request.client_wants_usage {
                // Already asking for usage: as the client wrote it (rewriting it through a map
                // cost ~1,000 instructions a streamed request, `STREAM=1 bench/instructions.sh`).
                out.extend_from_slice(member.value);
            } else {
                match serde_json::from_slice::<Map<String, Value>>(member.value) {
                    Ok(options) => write_json(&mut out, &WithUsage(&options)),
                    Err(_) => write_json(&mut out, &WithUsage(&Map::new())),
                }
            }
        } else {
            out.extend_from_slice(member.value);
        }
    }
    if request.stream && !has_stream_options {
        out.extend_from_slice(if out.len() > 1 { b"," } else { b"" });
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    out.push(b'}');
    out
}

/// Appends `value` as JSON (which cannot fail for a string or a map of JSON values).
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let _ = serde_json::to_writer(out, value);
}

/// The client's `stream_options` with `include_usage: true`.
struct WithUsage<'a>(&'a Map<String, Value>);

impl Serialize for WithUsage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0.iter().filter(|(key, _)| key.as_str() != "include_usage") {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("include_usage", &true)?;
        map.end()
    }
}

/// Re-chunks the upstream bytes into whole SSE events and forwards them as they came: the
/// complete events of one read leave as one piece (a slice of the read), split only around a
/// usage-only event, which the client may not have asked for.
fn forward_stream(
    response: UpstreamHttpResponse,
    timeouts: CallTimeouts,
) -> impl futures_util::Stream<Item = Result<StreamPiece, Error>> + Send {
    async_stream::try_stream! {
        let mut chunks = UpstreamChunks::new(response, timeouts.body);
        let mut parser = SseParser::new();
        let mut finished = false;
        while !finished {
            let span = match chunks.next().await? {
                Some(chunk) => {
                    parser.push(chunk);
                    parser.take_complete()
                }
                None => {
                    finished = true;
                    parser.take_rest()
                }
            };
            let Some(span) = span else { continue };
            for piece in Pieces::new(span) {
                yield piece;
            }
        }
    }
}

/// The pieces of a span of complete events: runs of events forwarded together, and each
/// usage-only event on its own.
struct Pieces {
    span: Bytes,
    /// Where the next piece starts.
    start: usize,
    /// A usage-only event found while closing the run before it, sent next.
    usage_only: Option<(std::ops::Range<usize>, Usage)>,
}

impl Pieces {
    fn new(span: Bytes) -> Self {
        Self { span, start: 0, usage_only: None }
    }
}

impl Iterator for Pieces {
    type Item = StreamPiece;

    fn next(&mut self) -> Option<StreamPiece> {
        if let Some((range, usage)) = self.usage_only.take() {
            self.start = range.end;
            return Some(StreamPiece { bytes: self.span.slice(range), usage: Some(usage), usage_only: true, has_content: false });
        }
        if self.start >= self.span.len() {
            return None;
        }
        let mut run = StreamPiece { bytes: Bytes::new(), usage: None, usage_only: false, has_content: false };
        let mut end = self.start;
        for (range, data) in sse::events(&self.span[self.start..]) {
            let range = self.start + range.start..self.start + range.end;
            let class = classify(&data);
            if class.usage_only {
                self.usage_only = class.usage.map(|usage| (range, usage));
                break;
            }
            run.has_content |= class.has_content;
            if class.usage.is_some() {
                run.usage = class.usage;
            }
            end = range.end;
        }
        if end == self.start && self.usage_only.is_some() {
            // The run is empty: the usage-only event is the piece.
            return self.next();
        }
        run.bytes = self.span.slice(self.start..end);
        self.start = end;
        Some(run)
    }
}

/// What one event carries.
struct EventClass {
    has_content: bool,
    usage: Option<Usage>,
    /// Usage and no choices: the chunk the gateway asked for on the client's behalf.
    usage_only: bool,
}

/// Finds `"usage"` in an event's data (built once: a search per event is on the hot path).
static USAGE_KEY: LazyLock<memchr::memmem::Finder<'static>> = LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));

fn classify(data: &[u8]) -> EventClass {
    let mut class = EventClass { has_content: false, usage: None, usage_only: false };
    if data.is_empty() || data == b"[DONE]" {
        return class;
    }
    // Most chunks carry `"usage":null` or nothing; only parse the ones that may hold
    // usage. (`"usage"` cannot occur unescaped inside a string: the first is the key.)
    let may_hold_usage = USAGE_KEY.find(data).is_some_and(|at| !data[at..].starts_with(b"\"usage\":null"));
    if may_hold_usage {
        #[derive(serde::Deserialize)]
        struct UsageChunk {
            #[serde(default)]
            choices: Vec<serde::de::IgnoredAny>,
            usage: Option<Usage>,
        }
        if let Ok(chunk) = serde_json::from_slice::<UsageChunk>(data) {
            class.usage = chunk.usage;
            class.usage_only = chunk.usage.is_some() && chunk.choices.is_empty();
        }
    }
    class.has_content = !class.usage_only;
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces a read holding `events` (each a `data:` value) is forwarded as.
    fn pieces(events: &[&str]) -> Vec<StreamPiece> {
        let read: String = events.iter().map(|data| format!("data: {data}\n\n")).collect();
        let mut parser = SseParser::new();
        parser.push(read.clone());
        let all: Vec<StreamPiece> = Pieces::new(parser.take_complete().expect("complete events")).collect();
        let forwarded: Vec<u8> = all.iter().flat_map(|piece| piece.bytes.to_vec()).collect();
        assert_eq!(forwarded, read.as_bytes(), "every byte forwarded, in order");
        all
    }

    const USAGE_ONLY: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
    const CONTENT: &str = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#;

    /// What the upstream gets: the client's object with the two changes, nothing else.
    fn upstream_json(mut client: Value, stream: bool) -> Value {
        if stream {
            client["stream"] = true.into();
        }
        let request = ChatRequest::parse(client.to_string()).expect("a valid request");
        serde_json::from_slice(&upstream_body(&request, "up-model")).expect("the upstream body is JSON")
    }

    #[test]
    fn the_upstream_body_renames_the_model_and_asks_a_stream_for_usage() {
        let client = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "x_vendor": {"a": [1, 2]}});
        let mut expected = client.clone();
        expected["model"] = "up-model".into();
        assert_eq!(upstream_json(client.clone(), false), expected);
        expected["stream"] = true.into();
        expected["stream_options"] = serde_json::json!({"include_usage": true});
        assert_eq!(upstream_json(client, true), expected);
        // The client's own stream options are kept; include_usage is forced on.
        let client = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": false, "continuous_usage_stats": true}});
        let sent = upstream_json(client, true);
        assert_eq!(sent["stream_options"], serde_json::json!({"include_usage": true, "continuous_usage_stats": true}));
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["model"], "up-model");
    }

    #[test]
    fn the_upstream_body_keeps_the_clients_bytes() {
        // Numbers beyond f64, key order, spacing inside values and escaped keys, as sent.
        let body = r#"{"seed": 123456789012345678901234567890, "messages" : [ {"role":"user","content":"caf\u00e9"} ],"model":"auto","x\"y":1.50e+3}"#;
        let request = ChatRequest::parse(body).expect("valid");
        let sent = String::from_utf8(upstream_body(&request, "up-\"model")).expect("UTF-8");
        assert_eq!(
            sent,
            r#"{"seed":123456789012345678901234567890,"messages":[ {"role":"user","content":"caf\u00e9"} ],"model":"up-\"model","x\"y":1.50e+3}"#
        );
    }

    #[test]
    fn stream_options_that_ask_for_usage_go_as_written() {
        let request = |options: &str| {
            ChatRequest::parse(format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":true,"stream_options":{options}}}"#))
                .expect("a valid request")
        };
        let written = r#"{ "include_usage" : true, "x": [1,2] }"#;
        let sent = String::from_utf8(upstream_body(&request(written), "up")).expect("UTF-8");
        assert!(sent.contains(&format!(r#""stream_options":{written}"#)), "{sent}");
        // The last include_usage is what a map reads: a later false is rewritten to true.
        for options in [r#"{"include_usage":true,"include_usage":false}"#, r#"{"include_usage":"true"}"#, r#"{"include_usage":1}"#, "{}"] {
            assert!(!request(options).client_wants_usage, "{options}");
            let sent: Value = serde_json::from_slice(&upstream_body(&request(options), "up")).expect("JSON");
            assert_eq!(sent["stream_options"]["include_usage"], true, "{options}");
        }
        assert!(request(r#"{"include_usage":false,"incl\u0075de_usage":true}"#).client_wants_usage);
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let class = classify(USAGE_ONLY.as_bytes());
        assert!(class.usage_only);
        assert!(!class.has_content);
        assert_eq!(class.usage, Some(Usage::new(5, 7)));
    }

    #[test]
    fn the_events_of_a_read_leave_together_around_the_usage_only_chunk() {
        let all = pieces(&[CONTENT, CONTENT, CONTENT, USAGE_ONLY, "[DONE]"]);
        let shape: Vec<(usize, bool, bool, Option<Usage>)> = all
            .iter()
            .map(|piece| (piece.bytes.windows(6).filter(|w| w == b"data: ").count(), piece.has_content, piece.usage_only, piece.usage))
            .collect();
        assert_eq!(shape, [(3, true, false, None), (1, false, true, Some(Usage::new(5, 7))), (1, false, false, None)]);
        // The usage-only chunk first, and last.
        let all = pieces(&[USAGE_ONLY, CONTENT]);
        assert_eq!(all.iter().map(|piece| (piece.usage_only, piece.has_content)).collect::<Vec<_>>(), [(true, false), (false, true)]);
        let all = pieces(&[CONTENT, USAGE_ONLY]);
        assert_eq!(all.iter().map(|piece| (piece.usage_only, piece.has_content)).collect::<Vec<_>>(), [(false, true), (true, false)]);
    }

    #[test]
    fn usage_on_content_chunks_is_kept_and_the_last_wins() {
        let with_usage = |completion: u32| {
            format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"a"}}}}],"usage":{{"prompt_tokens":5,"completion_tokens":{completion},"total_tokens":{}}}}}"#, 5 + completion)
        };
        let (first, second) = (with_usage(1), with_usage(2));
        let all = pieces(&[&first, &second]);
        assert_eq!(all.len(), 1);
        assert!(all[0].has_content && !all[0].usage_only);
        assert_eq!(all[0].usage, Some(Usage::new(5, 2)));
    }

    #[test]
    fn content_chunk_is_forwarded_as_is() {
        let all = pieces(&[CONTENT]);
        assert_eq!(all.len(), 1);
        assert!(!all[0].usage_only);
        assert!(all[0].has_content);
        assert_eq!(&all[0].bytes[..], format!("data: {CONTENT}\n\n").as_bytes());
    }
}
