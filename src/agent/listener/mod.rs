//! Every listener of the agent (the HTTP endpoints on `--listen`, the gRPC API on `--api-socket`)
//! serves through here: a cap on open connections, a deadline for a request's headers and one for
//! an idle connection, so slow or abusive clients can neither pin memory nor lock out probes.

mod connections;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use self::connections::{Admission, Connections, Guarded, Slot, Tracked};

/// How a listener bounds its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request's headers must be in within this: from the connection's opening for its first
    /// request, from the first byte for a later one.
    pub header_timeout: Duration,
    /// A connection idle between requests (keep-alive) is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once; at the cap, the oldest idle one makes room for a new one.
    pub max_connections: usize,
}

/// `--listen`: kubelet probes, Prometheus scrapes and a person with curl need a handful of
/// connections; every one of them sends its request at once. Prometheus's keep-alive connection
/// outlives its idle time only when it scrapes less often than once a minute.
pub const HTTP_LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(60),
    max_connections: 128,
};

/// `--api-socket` (owner-only): a few `diagnose --agent` clients at a time.
pub const API_LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(60),
    max_connections: 32,
};

/// Largest HTTP/1.1 read buffer, so the largest request head (hyper's minimum is 8 KiB).
const MAX_HTTP1_BUFFER: usize = 16 * 1024;
/// Streams (calls) at once on one HTTP/2 connection.
const MAX_HTTP2_STREAMS: u32 = 8;
/// Largest HTTP/2 header list a client may send.
const MAX_HTTP2_HEADER_LIST: u32 = 16 * 1024;
/// What the connections in flight get to finish after the listener is told to stop.
const DRAIN: Duration = Duration::from_secs(5);
/// A warning about connections closed early is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// After an accept error that is not one connection's (no file descriptors left), wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The wire protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: the HTTP endpoints.
    Http1,
    /// HTTP/2 only: gRPC.
    Http2,
}

/// A listener whose connections can be accepted one by one.
pub trait Accept: Send {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Serves `service` on every connection `listener` accepts, within `limits`, until `cancel`; then
/// lets the requests in flight finish (at most [`DRAIN`]). `name` is for the log.
pub async fn serve<L, S, B>(
    name: &'static str,
    listener: L,
    service: S,
    protocol: Protocol,
    limits: Limits,
    cancel: CancellationToken,
) where
    L: Accept,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open = Connections::new(limits.max_connections);
    let mut tasks = JoinSet::new();
    let mut early = EarlyCloses::default();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept_one() => accepted,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(error) if is_one_connections(&error) => continue,
            Err(error) => {
                warn!(listener = name, %error, "cannot accept connections; retrying in 1s");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let slot = match open.admit() {
            Admission::Admitted(slot) => slot,
            Admission::Evicted(slot) => {
                early.count(name, limits.max_connections);
                slot
            }
            Admission::Refused => {
                early.count(name, limits.max_connections);
                continue;
            }
        };
        tasks.spawn(connection(
            io,
            slot,
            service.clone(),
            protocol,
            limits,
            cancel.clone(),
        ));
    }
    // Each connection task drains itself within DRAIN once cancelled.
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection until it ends, its deadline passes, it is evicted, or the listener stops.
async fn connection<I, S, B>(
    io: I,
    slot: Slot,
    service: S,
    protocol: Protocol,
    limits: Limits,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::clone(&slot.activity);
    let io = TokioIo::new(Tracked {
        io,
        activity: Arc::clone(&activity),
        track_reads: protocol == Protocol::Http1,
    });
    let counted = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let busy = counted.begin();
        let call = service.clone().oneshot(request);
        async move {
            let response = call.await?;
            Ok::<_, Infallible>(response.map(|body| Guarded { body, _busy: busy }))
        }
    });
    let expired = activity.expired(&limits);
    match protocol {
        Protocol::Http1 => {
            let conn = http1::Builder::new()
                .keep_alive(true)
                .header_read_timeout(None)
                .max_buf_size(MAX_HTTP1_BUFFER)
                .serve_connection(io, service);
            drive(conn, |c| c.graceful_shutdown(), expired, &cancel).await;
        }
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(MAX_HTTP2_STREAMS)
                .max_header_list_size(MAX_HTTP2_HEADER_LIST)
                .serve_connection(io, service);
            drive(conn, |c| c.graceful_shutdown(), expired, &cancel).await;
        }
    }
    debug!(protocol = ?protocol, "connection closed");
    drop(slot);
}

/// Runs `conn` until it ends or `expired`; on `cancel`, asks it to finish what is in flight and
/// waits at most [`DRAIN`]. Dropping the connection closes it.
async fn drive<C: Future>(
    conn: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    expired: impl Future<Output = ()>,
    cancel: &CancellationToken,
) {
    let mut conn = std::pin::pin!(conn);
    let mut expired = std::pin::pin!(expired);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = expired.as_mut() => return,
        () = cancel.cancelled() => {}
    }
    shutdown(conn.as_mut());
    tokio::select! {
        _ = conn => {}
        () = expired => {}
        () = tokio::time::sleep(DRAIN) => {}
    }
}

/// Errors of the one connection being accepted, not of the listener: go on at once.
fn is_one_connections(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Connections closed early because the cap was reached: counted, and logged once a minute.
#[derive(Default)]
struct EarlyCloses {
    count: u64,
    since: Option<Instant>,
}

impl EarlyCloses {
    fn count(&mut self, listener: &'static str, max: usize) {
        self.count += 1;
        let now = Instant::now();
        match self.since {
            Some(since) if now < since + WARN_EVERY => {}
            _ => {
                warn!(
                    listener,
                    max_connections = max,
                    closed = self.count,
                    "connection cap reached: closing the oldest idle connections (slow or abusive clients?)"
                );
                self.count = 0;
                self.since = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
