//! Bounded shutdown: in-flight streams get a grace period, then they are cut.
//!
//! A cut stream ends the way an upstream failure mid-stream does: the client gets an error
//! event and the outcome row records a 503 with class `shutdown`, so the log still has it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::Error;
use crate::providers::{PieceStream, StreamPiece};

/// `pieces`, ended with [`Error::ShuttingDown`] once `cut` is cancelled.
pub fn cut_on(pieces: PieceStream, cut: CancellationToken) -> PieceStream {
    Box::pin(CutOn { pieces: Some(pieces), cancelled: Box::pin(cut.cancelled_owned()) })
}

/// The stream [`cut_on`] returns. One cancellation future for the whole stream (a `select!`
/// per piece would register and drop a waiter for every event).
struct CutOn {
    /// `None` once the stream has ended (or been cut).
    pieces: Option<PieceStream>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Stream for CutOn {
    type Item = Result<StreamPiece, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(pieces) = this.pieces.as_mut() else { return Poll::Ready(None) };
        // The cut first, as a biased select would: a stream that always has a piece ready
        // is still cut.
        if this.cancelled.as_mut().poll(cx).is_ready() {
            this.pieces = None;
            return Poll::Ready(Some(Err(Error::ShuttingDown)));
        }
        match pieces.poll_next_unpin(cx) {
            Poll::Ready(None) => {
                this.pieces = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}
