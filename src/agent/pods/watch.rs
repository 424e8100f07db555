//! The watch on this node's pods: a kube-rs `watcher` with `spec.nodeName=<node>` (never cluster-wide),
//! relisting after 410 Gone, resuming after a dropped connection. Any error drops the watcher and
//! its connection; the next one lists afresh after a jittered, bounded backoff.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::backoff::Backoff;

/// The watch's `timeoutSeconds`: the API server ends it then, and the watcher takes a stream
/// silent for this long plus a few seconds for dead and watches again (bookmarks come about
/// once a minute on a live one).
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// After an error, a fresh list waits this long, doubling, jittered.
pub const RELIST_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(30),
};
/// A watch that ran this long without an error starts the backoff over.
const BACKOFF_RESET: Duration = Duration::from_secs(120);

/// The pods of `node`, from a list served by the API server's cache (resourceVersion=0: at 5,000
/// nodes a quorum read per node would weigh on etcd), then a watch with bookmarks.
///
/// kube's watcher keeps a watch whose stream sent something it cannot decode, and its resume
/// point; the kubelet's reflector, too, drops such a watch. Here any error ends the watcher: the
/// connection is closed at once, and what follows is a fresh list (its own resourceVersion), so
/// nothing from a stream gone wrong is trusted.
pub fn pods_on_node(
    client: kube::Client,
    node: &str,
) -> impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send + 'static {
    let pods: Api<Pod> = Api::all(client);
    let mut config = watcher::Config::default()
        .fields(&node_selector(node))
        .timeout(WATCH_TIMEOUT.as_secs() as u32)
        .any_semantic();
    // One node's pods fit in one answer; a paginated list could not be served from the cache.
    config.page_size = None;
    relisting(
        move || watcher(pods.clone(), config.clone()).boxed(),
        RELIST_BACKOFF,
    )
}

/// Items of `start()`'s stream until it fails; then that stream is dropped and, after the
/// backoff, a new one started. Errors are passed on (the caller reports them).
pub fn relisting<T, E, F>(start: F, backoff: Backoff) -> impl Stream<Item = Result<T, E>> + Send
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn() -> BoxStream<'static, Result<T, E>> + Send + 'static,
{
    struct State<T, E, F> {
        start: F,
        current: Option<BoxStream<'static, Result<T, E>>>,
        failures: u32,
        last_failure: Option<Instant>,
    }
    let state = State {
        start,
        current: None,
        failures: 0,
        last_failure: None,
    };
    futures_util::stream::unfold(state, move |mut state| async move {
        loop {
            let stream = match &mut state.current {
                Some(stream) => stream,
                None => {
                    if state.failures > 0 {
                        tokio::time::sleep(backoff.delay(state.failures)).await;
                    }
                    state.current.insert((state.start)())
                }
            };
            match stream.next().await {
                Some(Ok(item)) => return Some((Ok(item), state)),
                Some(Err(error)) => {
                    state.current = None;
                    let calm = state
                        .last_failure
                        .is_none_or(|at| at.elapsed() >= BACKOFF_RESET);
                    state.failures = if calm { 1 } else { state.failures + 1 };
                    state.last_failure = Some(Instant::now());
                    return Some((Err(error), state));
                }
                // A watcher never ends; should one, a new one starts with a list, not at once.
                None => {
                    state.current = None;
                    state.failures = state.failures.max(1);
                }
            }
        }
    })
}

/// The field selector that keeps the watch on one node.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Tells `on_ok` whenever the API server answers a pod list or watch with success: the watcher
/// says when it fails, not when a resumed watch is established again.
#[derive(Clone)]
pub struct Observe {
    on_ok: Arc<dyn Fn() + Send + Sync>,
}

impl Observe {
    pub fn new(on_ok: impl Fn() + Send + Sync + 'static) -> Self {
        Observe {
            on_ok: Arc::new(on_ok),
        }
    }
}

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            on_ok: Arc::clone(&self.on_ok),
        }
    }
}

/// The service [`Observe`] wraps.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    on_ok: Arc<dyn Fn() + Send + Sync>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let lists_pods =
            request.method() == http::Method::GET && request.uri().path().ends_with("/pods");
        let on_ok = Arc::clone(&self.on_ok);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if lists_pods && response.status().is_success() {
                on_ok();
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use tower::ServiceExt;

    /// A stream that fails is dropped at once (its connection with it) and a new one started
    /// after the backoff; what the failed one would have sent next is never read.
    #[tokio::test]
    async fn an_error_drops_the_stream_and_starts_afresh() {
        use std::sync::atomic::AtomicBool;

        /// Flags its drop: the stream (and so its connection) is gone.
        struct Connection(Arc<AtomicBool>);
        impl Drop for Connection {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let starts = Arc::new(AtomicUsize::new(0));
        let first_closed = Arc::new(AtomicBool::new(false));
        let started = Arc::clone(&starts);
        let closed = Arc::clone(&first_closed);
        let start = move || {
            let n = started.fetch_add(1, Ordering::SeqCst);
            let connection = Connection(if n == 0 {
                Arc::clone(&closed)
            } else {
                Arc::new(AtomicBool::new(false))
            });
            let items: Vec<Result<String, String>> = if n == 0 {
                vec![
                    Ok("listed rv=5".into()),
                    Err("cannot decode".into()),
                    Ok("bogus rv=999999".into()),
                ]
            } else {
                vec![Ok(format!("listed again #{n}"))]
            };
            futures_util::stream::iter(items)
                .map(move |item| {
                    let _alive = &connection;
                    item
                })
                .chain(futures_util::stream::pending())
                .boxed()
        };
        let backoff = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(50),
        };
        let mut stream = Box::pin(relisting(start, backoff));
        assert_eq!(stream.next().await, Some(Ok("listed rv=5".to_string())));
        assert_eq!(stream.next().await, Some(Err("cannot decode".to_string())));
        assert!(
            first_closed.load(Ordering::SeqCst),
            "the failed stream is dropped when its error is handed on"
        );
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a new stream within the backoff");
        assert_eq!(next, Some(Ok("listed again #1".to_string())));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_selector_names_the_node() {
        assert_eq!(node_selector("node-1"), "spec.nodeName=node-1");
    }

    #[tokio::test]
    async fn only_successful_pod_lists_and_watches_count() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let layer = Observe::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let service = tower::service_fn(|request: http::Request<()>| async move {
            let status = if request.uri().query() == Some("fail") {
                500
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder().status(status).body(()).unwrap(),
            )
        });
        let mut service = layer.layer(service);
        for (method, uri, counted) in [
            ("GET", "/api/v1/pods?watch=true", 1),
            ("GET", "/api/v1/pods?fail", 0),
            ("POST", "/apis/events.k8s.io/v1/namespaces/a/events", 0),
            ("GET", "/api/v1/namespaces/a/pods", 1),
        ] {
            let before = seen.load(Ordering::SeqCst);
            let request = http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap();
            service.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(
                seen.load(Ordering::SeqCst) - before,
                counted,
                "{method} {uri}"
            );
        }
    }
}
