//! OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, Groq, Together, the mock…).
//!
//! The client's body goes upstream as it came, with two changes: `model` becomes the
//! upstream's model name, and a stream always asks for usage so every request can be costed.
//! Stream events are forwarded byte for byte except the usage-only chunk the client did not
//! ask for.

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;
use serde_json::{json, Value};

use super::{post_json, read_body, secret_header, CallTimeouts, StreamPiece, UpstreamResponse};
use crate::error::Error;
use crate::openai::{usage_of, ChatRequest, Usage};
use crate::sse::{SseEvent, SseParser};

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
        http: &reqwest::Client,
        request: &ChatRequest,
        upstream_model: &str,
        extra_headers: &HeaderMap,
        timeouts: CallTimeouts,
    ) -> Result<UpstreamResponse, Error> {
        let mut body = request.body.clone();
        body.insert("model".into(), Value::String(upstream_model.to_owned()));
        if request.stream {
            let options = body.entry("stream_options").or_insert_with(|| json!({}));
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
        let post = self.post(http, self.endpoints.url(Api::ChatCompletions, upstream_model)?, extra_headers);
        let response = post_json(post, &body, timeouts).await?;
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
        http: &reqwest::Client,
        body: &serde_json::Map<String, Value>,
        extra_headers: &HeaderMap,
        timeouts: CallTimeouts,
    ) -> Result<Bytes, Error> {
        let deployment = body.get("model").and_then(Value::as_str).unwrap_or_default();
        let post = self.post(http, self.endpoints.url(Api::Embeddings, deployment)?, extra_headers);
        let response = post_json(post, body, timeouts).await?;
        read_body(response, timeouts.body).await
    }

    /// A POST with the provider's headers (and the mock's fault headers, for the mock).
    fn post(&self, http: &reqwest::Client, url: reqwest::Url, extra_headers: &HeaderMap) -> reqwest::RequestBuilder {
        let mut builder = http.post(url).headers(self.headers.clone());
        if self.forward_mock_headers {
            for (name, value) in extra_headers {
                if name.as_str().starts_with("x-mock-") {
                    builder = builder.header(name, value);
                }
            }
        }
        builder
    }
}

/// Re-chunks the upstream bytes into whole SSE events and classifies each.
fn forward_stream(
    response: reqwest::Response,
    timeouts: CallTimeouts,
) -> impl futures_util::Stream<Item = Result<StreamPiece, Error>> + Send {
    async_stream::try_stream! {
        let mut bytes = response.bytes_stream();
        let mut parser = SseParser::new();
        let mut finished = false;
        while !finished {
            let next = tokio::time::timeout(timeouts.body, bytes.next()).await;
            let chunk: Option<Bytes> = match next {
                Err(_) => Err(Error::GatewayTimeout("upstream stream stalled".into()))?,
                Ok(Some(Err(e))) => Err(Error::BadGateway(format!("upstream stream broke: {e}")))?,
                Ok(Some(Ok(chunk))) => Some(chunk),
                Ok(None) => None,
            };
            match chunk {
                Some(chunk) => parser.push(&chunk),
                None => finished = true,
            }
            loop {
                let event = if finished { parser.finish() } else { parser.next_event() };
                let Some(event) = event else { break };
                yield classify(event);
            }
        }
    }
}

fn classify(event: SseEvent) -> StreamPiece {
    let skip = event.data.is_empty() || event.is_done();
    let mut piece = StreamPiece {
        has_content: false,
        usage: None,
        usage_only: false,
        bytes: event.raw,
    };
    if skip {
        return piece;
    }
    // Most chunks carry `"usage":null` or nothing; only parse the ones that may hold usage.
    let may_hold_usage = event.data.contains("\"usage\"") && !event.data.contains("\"usage\":null");
    if may_hold_usage {
        #[derive(serde::Deserialize)]
        struct UsageChunk {
            #[serde(default)]
            choices: Vec<serde::de::IgnoredAny>,
            usage: Option<Usage>,
        }
        if let Ok(chunk) = serde_json::from_str::<UsageChunk>(&event.data) {
            piece.usage = chunk.usage;
            piece.usage_only = chunk.usage.is_some() && chunk.choices.is_empty();
        }
    }
    piece.has_content = !piece.usage_only;
    piece
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        let mut parser = SseParser::new();
        parser.push(format!("data: {data}\n\n").as_bytes());
        parser.next_event().expect("event")
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let piece = classify(event(
            r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
        ));
        assert!(piece.usage_only);
        assert_eq!(piece.usage, Some(Usage::new(5, 7)));
    }

    #[test]
    fn content_chunk_is_forwarded_as_is() {
        let data = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#;
        let piece = classify(event(data));
        assert!(!piece.usage_only);
        assert!(piece.has_content);
        assert_eq!(&piece.bytes[..], format!("data: {data}\n\n").as_bytes());
    }
}
