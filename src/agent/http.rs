//! The agent's HTTP endpoints: `/metrics`, `/healthz` (loops alive), `/readyz` (discovery done and
//! every registry's checks started), `/api/v1/status`. GET only; none takes a target from the request (no SSRF).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;

use super::exposition::{accepts_gzip, gzip};
use super::health::Liveness;
use super::listener::{self, Protocol};
use super::metrics::Metrics;
use super::status::StatusBoard;

/// Requests handled at once; more wait their turn.
const MAX_CONCURRENT_REQUESTS: usize = 16;

/// What the handlers read; they never start a check.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    pub liveness: Arc<Liveness>,
}

pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .with_state(endpoints)
}

/// Serves until `cancel`, then finishes the requests in flight; every connection within
/// [`listener::HTTP_LIMITS`].
pub async fn serve(listener: TcpListener, endpoints: Endpoints, cancel: CancellationToken) {
    listener::serve(
        "http",
        listener,
        router(endpoints),
        Protocol::Http1,
        listener::HTTP_LIMITS,
        cancel,
    )
    .await;
}

/// The exposition, gzip-encoded when the request's `Accept-Encoding` allows it.
async fn metrics(State(endpoints): State<Endpoints>, request: HeaderMap) -> Response {
    let text = match endpoints.metrics.encode() {
        Ok(text) => text,
        Err(error) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {error}\n"),
            )
                .into_response();
        }
    };
    let wants_gzip = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_gzip);
    let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus::TEXT_FORMAT),
    );
    if wants_gzip {
        match gzip(text.as_bytes()) {
            Ok(packed) => {
                let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                return ([content_type, vary, encoding], packed).into_response();
            }
            // Cannot happen writing to memory; the plain text is still an answer.
            Err(error) => tracing::warn!(%error, "cannot gzip the metrics; serving them plain"),
        }
    }
    ([content_type, vary], text).into_response()
}

async fn healthz(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    let stalled = endpoints.liveness.stalled();
    if stalled.is_empty() {
        return (StatusCode::OK, "ok\n".into());
    }
    let loops: Vec<String> = stalled
        .iter()
        .map(|(name, quiet)| format!("{name} (quiet for {}s)", quiet.as_secs()))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("stalled: {}\n", loops.join(", ")),
    )
}

async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    match endpoints.status.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn status(State(endpoints): State<Endpoints>) -> Response {
    axum::Json(endpoints.status.snapshot()).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::report::Report;

    fn endpoints() -> Endpoints {
        Endpoints {
            metrics: Arc::new(Metrics::new("node-x", "v", "r", 10).unwrap()),
            status: Arc::new(StatusBoard::new("node-x")),
            liveness: Arc::new(Liveness::default()),
        }
    }

    async fn call(endpoints: &Endpoints, method: &str, uri: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = router(endpoints.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn readiness_follows_discovery_and_the_registries_start() {
        let e = endpoints();
        assert_eq!(
            call(&e, "GET", "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        e.status.discovered(["r.example"]);
        let (code, _, body) = call(&e, "GET", "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("r.example"), "{body}");
        e.status.started("r.example");
        e.status.record(
            Report {
                image: String::new(),
                registry: "r.example".into(),
                pullable: false,
                reason: None,
                summary: String::new(),
                fix: None,
                endpoints: vec![],
            },
            None,
            SystemTime::now(),
        );
        assert_eq!(call(&e, "GET", "/readyz").await.0, StatusCode::OK);
        let (code, content_type, body) =
            call(&e, "GET", "/api/v1/status?registry=evil.example").await;
        assert_eq!(code, StatusCode::OK);
        assert!(content_type.starts_with("application/json"));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["node"], "node-x");
        assert_eq!(json["registries"][0]["registry"], "r.example");
        assert!(!body.contains("evil"));
    }

    #[tokio::test]
    async fn liveness_fails_only_when_a_loop_stalls() {
        let e = endpoints();
        assert_eq!(call(&e, "GET", "/healthz").await.0, StatusCode::OK);
        let heart = e.liveness.register("scheduler", Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (code, _, body) = call(&e, "GET", "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("scheduler"), "{body}");
        heart.beat();
        assert_eq!(call(&e, "GET", "/healthz").await.0, StatusCode::OK);
    }

    /// `/metrics` asked with `accept_encoding`: its status, `Content-Encoding`, `Vary` and body.
    async fn scrape(
        endpoints: &Endpoints,
        accept_encoding: Option<&str>,
    ) -> (String, String, Vec<u8>) {
        let mut request = Request::builder().uri("/metrics");
        if let Some(value) = accept_encoding {
            request = request.header(header::ACCEPT_ENCODING, value);
        }
        let response = router(endpoints.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (encoding, vary) = (header(header::CONTENT_ENCODING), header(header::VARY));
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (encoding, vary, body.to_vec())
    }

    #[tokio::test]
    async fn metrics_are_gzipped_only_when_the_scraper_accepts_gzip() {
        use std::io::Read;
        let e = endpoints();
        let (encoding, vary, plain) = scrape(&e, None).await;
        assert_eq!((encoding.as_str(), vary.as_str()), ("", "accept-encoding"));
        // The process's own samples (CPU, memory) may move between two scrapes.
        let stable = |body: &[u8]| {
            let text = String::from_utf8(body.to_vec()).unwrap();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("process_")).collect();
            assert!(lines.iter().any(|l| l.starts_with("pullwatch_build_info{")));
            lines.join("\n")
        };
        let (encoding, _, refused) = scrape(&e, Some("gzip;q=0, identity")).await;
        assert_eq!(encoding, "");
        assert_eq!(stable(&refused), stable(&plain));
        let (encoding, vary, packed) = scrape(&e, Some("gzip")).await;
        assert_eq!(
            (encoding.as_str(), vary.as_str()),
            ("gzip", "accept-encoding")
        );
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(stable(&text), stable(&plain));
        assert!(packed.len() < plain.len());
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_and_nothing_else_is_served() {
        let e = endpoints();
        let (code, content_type, body) = call(&e, "GET", "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type, prometheus::TEXT_FORMAT);
        assert!(body.contains("pullwatch_build_info{"), "{body}");
        assert_eq!(
            call(&e, "POST", "/metrics").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(&e, "GET", "/probe?target=10.0.0.1").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
