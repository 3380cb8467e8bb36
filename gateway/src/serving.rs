//! Serving the router on threads: the shared work-stealing runtime, or one single-threaded
//! runtime per serving thread (`[server] runtime = "per_core"`).
//!
//! With `per_core`, one listening socket is accepted on the shared runtime and each new
//! connection is handed to the serving thread with the fewest open connections (ties in
//! turn). A connection then lives on that thread: its requests are read, proxied over the
//! thread's own upstream pool and answered without waking another thread. Handing out by
//! open-connection count, rather than letting the kernel hash connections over
//! `SO_REUSEPORT` sockets, keeps a client with a few keep-alive connections (or a proxy in
//! front) spread over every thread instead of landing on one by chance.

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::providers::UpstreamClient;

/// Resolves when every server has stopped accepting and drained its connections.
pub(crate) type ServersDone = Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>;

/// Binds the listening socket (`SO_REUSEADDR`, so a restart does not wait out `TIME_WAIT`;
/// not `SO_REUSEPORT`: a second gateway on the same port is refused).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    /// Pending connections (the kernel caps it at `net.core.somaxconn`).
    const BACKLOG: u32 = 1024;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepted sockets send stream chunks as they come: no Nagle delay waiting on the client's ACK.
fn no_delay(tcp: &mut TcpStream) {
    let _ = tcp.set_nodelay(true);
}

/// Serves on the runtime this is polled on; resolves when the server has drained.
pub(crate) fn serve_shared(listener: TcpListener, router: Router, stop_accepting: CancellationToken) -> ServersDone {
    Box::pin(
        axum::serve(listener.tap_io(no_delay), router)
            .with_graceful_shutdown(stop_accepting.cancelled_owned())
            .into_future(),
    )
}

/// Open client connections per serving thread (empty on the shared runtime): what the
/// acceptor balances on, and what `/metrics` reports.
#[derive(Clone, Default)]
pub struct OpenConnections(Arc<[AtomicUsize]>);

impl OpenConnections {
    pub(crate) fn new(threads: usize) -> Self {
        Self((0..threads).map(|_| AtomicUsize::new(0)).collect())
    }

    /// Open connections of each serving thread, in thread order.
    pub fn per_thread(&self) -> Vec<usize> {
        self.0.iter().map(|open| open.load(Ordering::Relaxed)).collect()
    }

    /// The thread with the fewest open connections, looking from `start` on so that ties
    /// go to each thread in turn.
    fn fewest_from(&self, start: usize) -> usize {
        let threads = self.0.len();
        (0..threads)
            .map(|offset| (start + offset) % threads)
            .min_by_key(|&thread| self.0[thread].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn open(&self, thread: usize) -> OpenConnection {
        self.0[thread].fetch_add(1, Ordering::Relaxed);
        OpenConnection { threads: self.clone(), thread }
    }
}

/// Counts one connection open on its thread until dropped (when the connection closes).
struct OpenConnection {
    threads: OpenConnections,
    thread: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.threads.0[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection on its serving thread.
pub(crate) struct CountedConnection {
    stream: TcpStream,
    _open: OpenConnection,
}

impl AsyncRead for CountedConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A connection on its way from the acceptor to a serving thread. The socket travels as a
/// std socket: a Tokio socket belongs to the runtime whose I/O driver registered it.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    open: OpenConnection,
}

/// A serving thread's side of the acceptor: axum accepts from it as from a socket.
struct HandedConnections {
    incoming: mpsc::UnboundedReceiver<Handoff>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for HandedConnections {
    type Io = CountedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(handoff) = self.incoming.recv().await else {
                // The acceptor has stopped; graceful shutdown ends this server.
                return std::future::pending().await;
            };
            match TcpStream::from_std(handoff.stream) {
                Ok(stream) => return (CountedConnection { stream, _open: handoff.open }, handoff.peer),
                Err(e) => tracing::warn!(error = %e, "could not take over a handed connection"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Accepts on the runtime this runs on and hands each connection to the serving thread with
/// the fewest open ones, until `stop`; the socket closes when this returns.
async fn hand_out_connections(
    listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<Handoff>>,
    open: OpenConnections,
    stop: CancellationToken,
) {
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The client gave up before we took it: nothing to do.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => continue,
            // Out of file descriptors and the like: wait rather than spin (as axum does).
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand over an accepted connection");
                continue;
            }
        };
        let thread = open.fewest_from(next);
        next = thread + 1;
        // A thread that has already stopped drops the connection (and its count) on return.
        let _ = threads[thread].send(Handoff { stream, peer, open: open.open(thread) });
    }
}

/// One thread per entry of `open`, each running a single-threaded runtime with its own
/// upstream connection pool, fed connections by an acceptor on the calling runtime; resolves
/// when all have drained. The threads keep their runtimes until `release`, so connections
/// they opened (database pools included) work until the end.
pub(crate) fn serve_per_core(
    listener: TcpListener,
    router: Router,
    open: OpenConnections,
    connect_timeout: Duration,
    stop_accepting: CancellationToken,
    release: CancellationToken,
) -> Result<ServersDone, Error> {
    let local_addr = listener.local_addr().map_err(|e| Error::Internal(format!("listener: {e}")))?;
    let threads = open.0.len();
    let mut finished = Vec::with_capacity(threads);
    let mut senders = Vec::with_capacity(threads);
    for index in 0..threads {
        let (sender, incoming) = mpsc::unbounded_channel();
        senders.push(sender);
        let listener = HandedConnections { incoming, local_addr };
        let http = UpstreamClient::new(connect_timeout)?;
        let (router, stop, release) = (router.clone(), stop_accepting.clone(), release.clone());
        let (done, served) = tokio::sync::oneshot::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("serve-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    crate::app::use_thread_upstream_pool(http);
                    // Dropped with the runtime.
                    tokio::spawn(crate::app::keep_timer_wheel_armed());
                    let server = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).into_future();
                    tokio::select! {
                        served = server => {
                            let _ = done.send(served);
                            release.cancelled().await;
                        }
                        () = release.cancelled() => {}
                    }
                });
            })
            .map_err(|e| Error::Internal(format!("starting a serving thread: {e}")))?;
        finished.push(served);
    }
    tokio::spawn(hand_out_connections(listener, senders, open, stop_accepting));
    Ok(Box::pin(async move {
        for served in finished {
            served.await.map_err(|_| io::Error::other("a serving thread ended without a word"))??;
        }
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_thread_with_fewest_and_ties_take_turns() {
        let open = OpenConnections::new(3);
        let mut next = 0;
        let mut held = Vec::new();
        let mut picked = Vec::new();
        for _ in 0..6 {
            let thread = open.fewest_from(next);
            next = thread + 1;
            picked.push(thread);
            held.push(open.open(thread));
        }
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
        assert_eq!(open.per_thread(), [2, 2, 2]);
        // Thread 1's connections close: the next two go there.
        held.retain(|c| c.thread != 1);
        assert_eq!(open.per_thread(), [2, 0, 2]);
        for _ in 0..2 {
            let thread = open.fewest_from(next);
            next = thread + 1;
            assert_eq!(thread, 1);
            held.push(open.open(thread));
        }
        assert_eq!(open.per_thread(), [2, 2, 2]);
    }
}
