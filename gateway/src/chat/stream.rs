//! Streaming answers: upstream SSE pieces forwarded to the client as they arrive, coalesced
//! into one body frame when several are ready together, with the outcome row and the cache
//! entry written when the stream ends.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::openai::Usage;
use crate::outcome::RequestOutcome;
use crate::providers::PieceStream;
use crate::registry::ModelEntry;
use crate::response_cache::{CachePlan, GatewayCache, StreamCapture};
use crate::sse::data_event;

/// An answer to keep in the cache once it is complete.
pub struct CacheWrite {
    pub cache: Arc<GatewayCache>,
    pub plan: CachePlan,
    pub embedding: Option<router_model::Embedding>,
    pub query: String,
}

impl CacheWrite {
    pub fn store(self, answer: cache::CachedAnswer) {
        self.cache.store(&self.plan, answer, self.embedding.as_deref(), self.query);
    }
}

/// Forwards pieces to the client as they arrive, drops the usage chunk the client did not
/// ask for, and records the outcome when the stream ends (or breaks).
pub fn client_stream(
    mut pieces: PieceStream,
    client_wants_usage: bool,
    model: Arc<ModelEntry>,
    mut outcome: RequestOutcome,
    started: Instant,
    keep: Option<CacheWrite>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    async_stream::stream! {
        let mut capture = keep.as_ref().map(|_| StreamCapture::new());
        let mut usage: Option<Usage> = None;
        let mut first_token_ms: Option<f64> = None;
        // Events that are ready together (a fast upstream sends many at once) leave as one
        // body frame: one write to the client instead of one per event.
        let mut ready: Vec<Bytes> = Vec::new();
        let mut ended = false;
        while !ended {
            let Some(mut next) = pieces.next().await else { break };
            loop {
                match next {
                    Ok(piece) => {
                        if piece.usage.is_some() {
                            usage = piece.usage;
                        }
                        if piece.has_content && first_token_ms.is_none() {
                            first_token_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                        }
                        if let Some(capture) = capture.as_mut() {
                            capture.push(&piece.bytes);
                        }
                        if !piece.usage_only || client_wants_usage {
                            ready.push(piece.bytes);
                        }
                    }
                    Err(error) => {
                        // Headers are gone already: end the stream with an error event.
                        if let Some(frame) = coalesce(&mut ready) {
                            yield Ok(frame);
                        }
                        outcome.finish_error(&error, started);
                        yield Ok(data_event(&error.body().to_string()));
                        return;
                    }
                }
                if ready.iter().map(Bytes::len).sum::<usize>() >= MAX_COALESCED_BYTES {
                    break;
                }
                // The upstream client hands over one HTTP chunk at a time: let its connection
                // task run once, then take what it has (nothing, for an upstream generating
                // tokens in real time; the rest of a burst, for a fast one).
                let mut polled = futures_util::FutureExt::now_or_never(pieces.next());
                for _ in 0..COALESCE_YIELDS {
                    if polled.is_some() {
                        break;
                    }
                    tokio::task::yield_now().await;
                    polled = futures_util::FutureExt::now_or_never(pieces.next());
                }
                match polled {
                    Some(Some(piece)) => next = piece,
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if let Some(frame) = coalesce(&mut ready) {
                yield Ok(frame);
            }
        }
        outcome.finish_ok(usage, &model, started, first_token_ms);
        if let (Some(keep), Some(capture)) = (keep, capture) {
            if let Some(answer) = capture.finish(&model.name) {
                keep.store(answer);
            }
        }
    }
}

/// How many times a stream lets other tasks run while waiting to add an event to a frame:
/// the upstream's connection task needs a turn per event it hands over.
const COALESCE_YIELDS: usize = 4;

/// Largest body frame built from events that were ready together.
const MAX_COALESCED_BYTES: usize = 64 * 1024;

/// The events in `ready` as one frame (without a copy when there is one), emptying it.
fn coalesce(ready: &mut Vec<Bytes>) -> Option<Bytes> {
    match ready.len() {
        0 => None,
        1 => ready.pop(),
        _ => {
            let mut frame = bytes::BytesMut::with_capacity(ready.iter().map(Bytes::len).sum());
            for event in ready.drain(..) {
                frame.extend_from_slice(&event);
            }
            Some(frame.freeze())
        }
    }
}

