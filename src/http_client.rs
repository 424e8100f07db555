//! The reqwest client for one endpoint, built to follow the route the checks measured: the
//! address the tcp check reached, the endpoint's trust, the runtime's proxy decision; bounded everything.

use std::net::SocketAddr;
use std::time::Duration;

use crate::check::dns::DnsResolver;
use crate::peer_guard::{self, Named};
use crate::proxy::Proxy;
use crate::route::Endpoint;
use crate::trust::TlsClient;

/// Redirects followed at most (registries redirect blobs to storage; manifests rarely).
const MAX_REDIRECTS: usize = 5;

/// Sent on every request, so registry operators can tell pullwatch's probes apart.
pub const USER_AGENT: &str = concat!("pullwatch/", env!("CARGO_PKG_VERSION"));

/// Builds a client that talks to `endpoint` only through `connect_to` (or `proxy`).
pub fn build(
    endpoint: &Endpoint,
    connect_to: Option<SocketAddr>,
    tls: Option<&TlsClient>,
    proxy: Option<&Proxy>,
    dns: &DnsResolver,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    let named = Named {
        host: endpoint.host.clone(),
        address: connect_to.map(|addr| addr.ip()),
    };
    // A redirect to a loopback or link-local address the route does not name is not followed
    // (the 3xx is the answer); reqwest drops Authorization on a redirect to another host.
    let guard = named.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if guard.refuses_url(attempt.url()).is_some() {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(redirects)
        .pool_max_idle_per_host(1)
        .no_proxy();
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls((*tls.config).clone());
    }
    if let Some(addr) = connect_to {
        // The endpoint's own host is pinned; any other name (a redirect's) is looked up as the
        // dns check does, without the internal addresses the route does not name.
        builder = builder
            .dns_resolver(peer_guard::resolver(
                named,
                dns.clone(),
                timeout.mul_f64(0.9),
            ))
            .resolve(&endpoint.host, addr);
    }
    if let Some(proxy) = proxy {
        builder = builder.proxy(reqwest::Proxy::all(proxy.url_with_credentials())?);
    }
    // hosts.toml's `header`: on every request to this host, as containerd sends them.
    if !endpoint.extras.headers.is_empty() {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &endpoint.extras.headers {
            // Checked when hosts.toml was read; a value is never logged (it may be a token).
            if let (Ok(name), Ok(mut value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                value.set_sensitive(true);
                headers.append(name, value);
            }
        }
        builder = builder.default_headers(headers);
    }
    builder.build()
}

/// Reads at most `limit` bytes of a body; the rest is dropped unread.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}
