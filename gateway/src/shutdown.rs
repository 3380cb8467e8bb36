//! Bounded shutdown: in-flight streams get a grace period, then they are cut.
//!
//! A cut stream ends the way an upstream failure mid-stream does: the client gets an error
//! event and the outcome row records a 503 with class `shutdown`, so the log still has it.

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::providers::PieceStream;

/// `pieces`, ended with [`Error::ShuttingDown`] once `cut` is cancelled.
pub fn cut_on(mut pieces: PieceStream, cut: CancellationToken) -> PieceStream {
    Box::pin(async_stream::stream! {
        loop {
            tokio::select! {
                biased;
                () = cut.cancelled() => {
                    yield Err(Error::ShuttingDown);
                    return;
                }
                piece = pieces.next() => match piece {
                    Some(piece) => yield piece,
                    None => return,
                },
            }
        }
    })
}
