//! The watch on this node's pods: a kube-rs `watcher` with `spec.nodeName=<node>` (never cluster-wide),
//! relisting after 410 Gone, resuming after a dropped connection, with jittered backoff after errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tower::{Layer, Service};

/// The pods of `node`, from a list served by the API server's cache (resourceVersion=0: at 5,000
/// nodes a quorum read per node would weigh on etcd), then a watch with bookmarks.
pub fn pods_on_node(
    client: kube::Client,
    node: &str,
) -> impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send + 'static {
    let pods: Api<Pod> = Api::all(client);
    let mut config = watcher::Config::default()
        .fields(&node_selector(node))
        .any_semantic();
    // One node's pods fit in one answer; a paginated list could not be served from the cache.
    config.page_size = None;
    watcher(pods, config).default_backoff()
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
