//! The open connections of one listener: what each is doing (waiting for a request, serving one,
//! idle between requests), the deadline that follows from it, and the cap that makes room.

use hyper::body::{Body, Frame, SizeHint};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Limits;

/// The connections a listener holds open, at most `max`.
pub struct Connections {
    max: usize,
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Activity>>>,
}

/// Whether a new connection got a place.
pub enum Admission {
    /// It fit.
    Admitted(Slot),
    /// It fit once the oldest idle connection was closed for it.
    Evicted(Slot),
    /// Every open connection is serving a request: the new one is closed.
    Refused,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            max: max.max(1),
            next_id: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
        })
    }

    /// A place for a connection accepted now. At the cap, the oldest connection that is not serving
    /// a request (waiting for its headers, or idle between requests) is closed to make room: a
    /// flood of slow clients then only ever pushes out its own, and a probe or a scrape, which
    /// sends its request at once, still gets in.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.lock();
        let mut evicted = false;
        if open.len() >= self.max {
            let oldest_idle = open
                .iter()
                .find(|(_, activity)| activity.in_flight() == 0)
                .map(|(id, _)| *id);
            let Some(activity) = oldest_idle.and_then(|id| open.remove(&id)) else {
                return Admission::Refused;
            };
            activity.evicted.cancel();
            evicted = true;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        open.insert(id, Arc::clone(&activity));
        let slot = Slot {
            id,
            activity,
            connections: Arc::clone(self),
        };
        if evicted {
            Admission::Evicted(slot)
        } else {
            Admission::Admitted(slot)
        }
    }

    /// How many are open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection's place; dropping it frees the place.
pub struct Slot {
    id: u64,
    pub activity: Arc<Activity>,
    connections: Arc<Connections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

/// What one connection is doing, and so when it must close.
pub struct Activity {
    state: Mutex<State>,
    changed: Notify,
    /// Cancelled when the connection lost its place to a newer one.
    evicted: CancellationToken,
}

struct State {
    accepted: Instant,
    in_flight: usize,
    /// Whether a request was served: until then, the first request's headers are awaited.
    served: bool,
    idle_since: Instant,
    /// The first byte read while idle after a request: the next request's headers have begun.
    next_request_began: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            state: Mutex::new(State {
                accepted: now,
                in_flight: 0,
                served: false,
                idle_since: now,
                next_request_began: None,
            }),
            changed: Notify::new(),
            evicted: CancellationToken::new(),
        }
    }

    /// A request's headers arrived: no deadline while it is served (the handlers are bounded).
    pub fn begin(self: &Arc<Self>) -> Busy {
        {
            let mut state = self.lock();
            state.in_flight += 1;
            state.next_request_began = None;
        }
        self.changed.notify_one();
        Busy(Arc::clone(self))
    }

    /// Bytes arrived; while idle after a request they start the next request's header deadline.
    fn read_some(&self) {
        let mut state = self.lock();
        if state.in_flight == 0 && state.served && state.next_request_began.is_none() {
            state.next_request_began = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// When the connection must be closed, as of now; `None` while a request is served. The first
    /// request's headers are due `header_timeout` after the connection opened; later, an idle
    /// connection closes after `idle_timeout`, and a request that has begun must have its headers
    /// in within `header_timeout` of its first byte.
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let state = self.lock();
        if state.in_flight > 0 {
            None
        } else if !state.served {
            Some(state.accepted + limits.header_timeout)
        } else if let Some(began) = state.next_request_began {
            Some(began + limits.header_timeout)
        } else {
            Some(state.idle_since + limits.idle_timeout)
        }
    }

    /// Resolves when the connection is past its deadline or lost its place.
    pub async fn expired(&self, limits: &Limits) {
        loop {
            let changed = self.changed.notified();
            let deadline = self.deadline(limits);
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return;
            }
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.evicted.cancelled() => return,
                () = changed => {}
                () = sleep => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request being served; dropped when its response body is done (or abandoned).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut state = self.0.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.served = true;
                state.idle_since = Instant::now();
                state.next_request_began = None;
            }
        }
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request counted as served until it has been sent (a gRPC
/// stream stays busy while it streams).
pub struct Guarded<B> {
    pub body: B,
    pub _busy: Busy,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream, telling its [`Activity`] when bytes arrive (HTTP/1.1 only: on HTTP/2,
/// pings and window updates arrive while idle and begin no request).
pub struct Tracked<I> {
    pub io: I,
    pub activity: Arc<Activity>,
    pub track_reads: bool,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.track_reads && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before
        {
            self.activity.read_some();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_connections: 2,
    };

    fn slot(admission: Admission) -> Slot {
        match admission {
            Admission::Admitted(slot) | Admission::Evicted(slot) => slot,
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn deadlines_follow_what_the_connection_does() {
        let connections = Connections::new(4);
        let slot = slot(connections.admit());
        let activity = &slot.activity;
        let first = activity.deadline(&LIMITS).unwrap();
        assert!(first <= Instant::now() + LIMITS.header_timeout);
        // Bytes of the first request do not extend its header deadline.
        activity.read_some();
        assert_eq!(activity.deadline(&LIMITS), Some(first));
        let busy = activity.begin();
        assert_eq!(activity.deadline(&LIMITS), None);
        drop(busy);
        let idle = activity.deadline(&LIMITS).unwrap();
        let now = Instant::now();
        assert!(idle > now + LIMITS.idle_timeout - Duration::from_secs(1));
        assert!(idle <= now + LIMITS.idle_timeout);
        // The next request's first byte: its headers are due within the header timeout.
        activity.read_some();
        let next = activity.deadline(&LIMITS).unwrap();
        assert!(next <= Instant::now() + LIMITS.header_timeout);
        assert!(next > Instant::now() + LIMITS.header_timeout - Duration::from_secs(1));
    }

    #[tokio::test]
    async fn expiry_waits_for_the_deadline_and_a_request_holds_it_off() {
        let limits = Limits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            max_connections: 1,
        };
        let connections = Connections::new(4);
        let slot = slot(connections.admit());
        let activity = Arc::clone(&slot.activity);
        let busy = activity.begin();
        let watcher = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.expired(&limits).await }
        });
        tokio::time::sleep(limits.idle_timeout * 3).await;
        assert!(!watcher.is_finished(), "expired while serving a request");
        drop(busy);
        let idle = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("expired after the idle timeout")
            .unwrap();
        assert!(idle.elapsed() >= limits.idle_timeout - Duration::from_millis(20));
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Connections::new(LIMITS.max_connections);
        let first = slot(connections.admit());
        let second = slot(connections.admit());
        let _busy = second.activity.begin();
        let third = match connections.admit() {
            Admission::Evicted(slot) => slot,
            _ => panic!("the oldest idle connection was not evicted"),
        };
        assert!(first.activity.evicted.is_cancelled());
        assert!(!second.activity.evicted.is_cancelled());
        assert_eq!(connections.len(), 2);
        let _also_busy = third.activity.begin();
        assert!(matches!(connections.admit(), Admission::Refused));
        drop(first);
        assert_eq!(connections.len(), 2, "an evicted slot is not counted twice");
        drop(third);
        assert!(matches!(connections.admit(), Admission::Admitted(_)));
    }
}
