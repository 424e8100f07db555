//! The connectivity chain of one endpoint on one connection: dns → tcp (the socket is kept) → tls
//! on that socket (straight, or through the proxy the runtime would use) → `GET /v2/` over that
//! same stream, then a polite close. The registry sees one connection and one handshake per check.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use super::{Diagnoser, Link, OnCheck, Probe};
use crate::check::conn::Conn;
use crate::check::dns::DnsOutcome;
use crate::check::tcp::{Dialed, TcpFailed};
use crate::check::tls::{Secured, TlsFailed};
use crate::check::{self, CheckKind, CheckResult, Failed};
use crate::http_client;
use crate::proxy::{self, Proxy};
use crate::reason::Reason;
use crate::route::{Endpoint, HttpFallback, Scheme};
use crate::trust::TlsClient;

/// What dns → tcp → tls leave for the HTTP steps: the chain's open connection, and what a client
/// for the later steps needs to follow the same route.
pub struct Reached {
    /// The connection the checks made, ready for the first request; `None` after containerd's
    /// fallback from a failed TLS attempt (the runtime connects again for plain HTTP too).
    conn: Option<Conn>,
    /// The endpoint the HTTP steps talk to: the endpoint, or the plain-HTTP one after
    /// containerd's fallback.
    served: Endpoint,
    /// Whether containerd's fallback to plain HTTP was taken.
    fell_back: bool,
    /// The address the tcp check reached (`None` through a proxy).
    target: Option<SocketAddr>,
    tls_client: Option<TlsClient>,
    proxy: Option<Proxy>,
}

impl Reached {
    /// The address the connection went to, unless that was a proxy's.
    pub fn address(&self) -> Option<SocketAddr> {
        self.target.filter(|_| self.proxy.is_none())
    }

    /// Closes the chain's connection politely (it may carry no request).
    pub async fn close(self) {
        if let Some(conn) = self.conn {
            conn.close().await;
        }
    }
}

/// Whether the chain sends `GET /v2/` after the handshake, and whether a client for the steps
/// after it is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// dns → tcp → tls only, then close: no HTTP request.
    Connect,
    /// Through `GET /v2/`.
    Ping,
    /// Through `GET /v2/`, and a client for auth and manifest.
    Api,
}

impl Diagnoser {
    /// Runs dns → tcp → tls → http against one endpoint, stopping at the first failure.
    pub async fn probe(&self, endpoint: &Endpoint) -> Probe {
        self.probe_asking(endpoint, Ask::Ping, &|_, _| {}).await.0
    }

    /// [`Diagnoser::probe`], telling `on_check` about every check as it completes.
    pub async fn probe_observed(&self, endpoint: &Endpoint, on_check: OnCheck<'_>) -> Probe {
        self.probe_asking(endpoint, Ask::Ping, on_check).await.0
    }

    /// [`Diagnoser::probe_observed`], also returning the client for the steps after `/v2/`.
    pub async fn probe_linked(
        &self,
        endpoint: &Endpoint,
        on_check: OnCheck<'_>,
    ) -> (Probe, Option<Link>) {
        self.probe_asking(endpoint, Ask::Api, on_check).await
    }

    /// The chain as far as `ask` says, on one connection; the client for the later steps with
    /// [`Ask::Api`] when `/v2/` passed.
    pub async fn probe_asking(
        &self,
        endpoint: &Endpoint,
        ask: Ask,
        on_check: OnCheck<'_>,
    ) -> (Probe, Option<Link>) {
        let mut probe = Probe::default();
        let Some(mut reached) = self.reach(endpoint, &mut probe, on_check).await else {
            return (probe, None);
        };
        if ask == Ask::Connect {
            reached.close().await;
            return (probe, None);
        }
        let served = reached.served.clone();
        let conn = reached.conn.take();
        let ping = async {
            let conn = match conn {
                Some(conn) => conn,
                None => self.reconnect(&reached).await?,
            };
            // A plain-HTTP endpoint's proxy takes the request itself.
            let http_proxy = reached
                .proxy
                .as_ref()
                .filter(|_| served.scheme == Scheme::Http);
            match check::http::check_on(conn, &served, http_proxy).await {
                // A redirect of `/v2/` (rare) is followed as the runtime's client would, guarded.
                Err(failed) if failed.status.is_some_and(|s| (300..400).contains(&s)) => {
                    match self.link(&reached) {
                        Ok(link) => check::http::check(&link.client, &served, link.proxied).await,
                        Err(_) => Err(failed),
                    }
                }
                answered => answered,
            }
        };
        let ran = check::run(CheckKind::Http, self.timeout, ping).await;
        let failed_status = ran.error().and_then(|e| e.status);
        let (result, http) = ran.split();
        on_check(endpoint, &result);
        probe.checks.push(result);
        probe.http_status = http.as_ref().map(|h| h.status).or(failed_status);
        probe.http = http;
        debug_assert!(probe.failed() || probe.http.is_some());
        if ask != Ask::Api || probe.http.is_none() {
            return (probe, None);
        }
        match self.link(&reached) {
            Ok(link) => (probe, Some(link)),
            Err(detail) => {
                let result = config_failure(CheckKind::Auth, detail);
                on_check(endpoint, &result);
                probe.checks.push(result);
                (probe, None)
            }
        }
    }

    /// Runs dns → tcp → tls against one endpoint (a registry's or a token server's), recording
    /// into `probe` and stopping at the first failure; the connection stays open for the caller.
    pub async fn reach(
        &self,
        endpoint: &Endpoint,
        probe: &mut Probe,
        on_check: OnCheck<'_>,
    ) -> Option<Reached> {
        let record = |probe: &mut Probe, result: CheckResult| {
            on_check(endpoint, &result);
            probe.checks.push(result);
        };
        let proxy = self.proxies.for_endpoint(endpoint);
        // Through a proxy, the node's own connection goes to the proxy, not the registry.
        let (host, port) = match proxy {
            Some(proxy) => (proxy.host().to_string(), proxy.port()),
            None => (endpoint.host.clone(), endpoint.port),
        };

        let (result, dns) = match host.parse::<IpAddr>() {
            Ok(ip) => literal_address(ip),
            // The lookup's own bound is inside the check's, so one family's answer outlives
            // the other's silence (as tcp's per-address bound below).
            Err(_) => check::run(
                CheckKind::Dns,
                self.timeout,
                check::dns::check(&self.resolver, &host, self.timeout.mul_f64(0.9)),
            )
            .await
            .split(),
        };
        record(probe, blame_proxy(result, proxy));
        let dns = dns?;
        let addresses = dns.addresses();
        probe.dns = Some(dns);

        let ran = self.tcp(endpoint, &addresses, port).await;
        // containerd (1.7.24+, 2.x) retries over plain HTTP on port 80 when HTTPS to a host
        // written without a port cannot connect.
        let fallback = endpoint.http_fallback.filter(|f| f.on_connect_failure);
        if let (Err(_), Some(fallback), None) = (&ran.outcome, fallback, proxy) {
            let http = plain_http(endpoint, fallback.port);
            let (mut retry, tcp) = self.tcp(&http, &addresses, fallback.port).await.split();
            retry.detail = format!(
                "HTTPS to port {port}: {}; {}: {}",
                ran.record.detail,
                fallback_rule(&fallback),
                retry.detail
            );
            record(probe, retry);
            let Dialed { outcome, stream } = tcp?;
            let target = outcome.reachable()[0];
            probe.tcp = Some(outcome);
            return Some(Reached {
                conn: Some(Conn::new(stream)),
                served: http,
                fell_back: true,
                target: Some(target),
                tls_client: None,
                proxy: None,
            });
        }
        let (result, tcp) = ran.split();
        record(probe, blame_proxy(result, proxy));
        let Dialed { outcome, stream } = tcp?;
        let target = outcome.reachable()[0];
        probe.tcp = Some(outcome);

        let tls_client = match endpoint.scheme {
            Scheme::Http => {
                return Some(Reached {
                    conn: Some(Conn::new(stream)),
                    served: endpoint.clone(),
                    fell_back: false,
                    target: Some(target),
                    tls_client: None,
                    proxy: proxy.cloned(),
                });
            }
            Scheme::Https => match self.trust.client(&endpoint.tls) {
                Ok(client) => client,
                Err(error) => {
                    record(probe, config_failure(CheckKind::Tls, error.to_string()));
                    return None;
                }
            },
        };
        let handshake = async {
            let stream = self.tunnel(endpoint, stream, proxy).await?;
            check::tls::check(stream, &endpoint.host, &tls_client).await
        };
        let ran = check::run(CheckKind::Tls, self.timeout, handshake).await;
        if let Some(fallback) = endpoint.http_fallback.filter(|f| falls_back(f, &ran)) {
            // The HTTPS attempt's failure is what sends containerd to plain HTTP: the tls
            // step passes, saying so; the HTTP steps go to the plain-HTTP endpoint.
            let mut note = ran.record;
            note.detail = format!("{}; {}", note.detail, fallback_rule(&fallback));
            note.ok = true;
            note.reason = None;
            record(probe, note);
            let http = plain_http(endpoint, fallback.port);
            let http_proxy = self.proxies.for_endpoint(&http).cloned();
            // The address the tcp check reached, unless that was a proxy's.
            let target = proxy
                .is_none()
                .then(|| SocketAddr::new(target.ip(), fallback.port));
            return Some(Reached {
                conn: None,
                served: http,
                fell_back: true,
                target,
                tls_client: None,
                proxy: http_proxy,
            });
        }
        let (result, secured) = ran.split();
        record(probe, result);
        let Secured { outcome, conn } = secured?;
        probe.tls = Some(outcome);
        Some(Reached {
            conn: Some(conn),
            served: endpoint.clone(),
            fell_back: false,
            target: Some(target),
            tls_client: Some(tls_client),
            proxy: proxy.cloned(),
        })
    }

    /// The client for the steps after `/v2/` (auth, manifest), pinned to the address the tcp
    /// check reached (or the proxy); the reason it could not be built otherwise.
    pub fn link(&self, reached: &Reached) -> Result<Link, String> {
        let connect_to = reached.address();
        http_client::build(
            &reached.served,
            connect_to,
            reached.tls_client.as_ref(),
            reached.proxy.as_ref(),
            &self.resolver,
            self.timeout,
        )
        .map(|client| Link {
            client,
            proxied: reached.proxy.is_some(),
            via: reached.fell_back.then(|| reached.served.clone()),
            address: connect_to,
        })
        .map_err(|e| e.to_string())
    }

    /// The tcp check to `port` of `addresses`; hosts.toml's `dial_timeout` bounds the dial (all
    /// addresses, as Go's `Dialer.Timeout`), within the check's own bound.
    async fn tcp(
        &self,
        endpoint: &Endpoint,
        addresses: &[IpAddr],
        port: u16,
    ) -> check::Ran<Dialed, TcpFailed> {
        let deadline = match endpoint.extras.dial_timeout {
            Some(dial) => dial.min(self.timeout.mul_f64(0.9)),
            None => self.timeout.mul_f64(0.9),
        };
        check::run(
            CheckKind::Tcp,
            self.timeout,
            check::tcp::check(addresses, port, deadline),
        )
        .await
    }

    /// A proxy tunnel on the tcp check's connection when the runtime would use one; else the
    /// connection itself.
    async fn tunnel(
        &self,
        endpoint: &Endpoint,
        stream: TcpStream,
        proxy: Option<&Proxy>,
    ) -> Result<TcpStream, TlsFailed> {
        match proxy {
            None => Ok(stream),
            Some(proxy) => {
                proxy::tunnel(stream, proxy, &endpoint.host, endpoint.port, self.timeout)
                    .await
                    .map_err(|e| TlsFailed {
                        reason: Reason::ProxyError,
                        message: e.to_string(),
                        chain: vec![],
                        plain_http: false,
                    })
            }
        }
    }

    /// A new plain connection for the HTTP steps after containerd's fallback from a failed TLS
    /// attempt (the runtime connects again too): to the address reached, or the proxy.
    async fn reconnect(&self, reached: &Reached) -> Result<Conn, check::http::HttpFailed> {
        let connected = match (&reached.proxy, reached.address()) {
            (Some(proxy), _) => TcpStream::connect((proxy.host(), proxy.port())).await,
            (None, Some(address)) => TcpStream::connect(address).await,
            (None, None) => Err(std::io::Error::other("no address to connect to")),
        };
        connected
            .map(Conn::new)
            .map_err(|error| check::http::HttpFailed {
                reason: check::tcp::classify_io(&error),
                message: format!("connect to {}: {error}", reached.served.url()),
                status: None,
            })
    }
}

/// The plain-HTTP endpoint containerd's fallback talks to: the same host on `port`.
fn plain_http(endpoint: &Endpoint, port: u16) -> Endpoint {
    Endpoint {
        scheme: Scheme::Http,
        port,
        http_fallback: None,
        ..endpoint.clone()
    }
}

/// Whether the HTTPS attempt's failure sends containerd to plain HTTP: a plain-HTTP answer
/// always, a handshake timeout by version (`isTLSError` in `remotes/docker/resolver.go`).
fn falls_back(fallback: &HttpFallback, ran: &check::Ran<Secured, TlsFailed>) -> bool {
    match &ran.outcome {
        Ok(_) => false,
        Err(Failed::Error(error)) => error.plain_http,
        Err(Failed::TimedOut) => fallback.on_handshake_timeout,
    }
}

fn fallback_rule(fallback: &HttpFallback) -> String {
    format!(
        "the runtime falls back to plain HTTP ({})",
        fallback.describe()
    )
}

/// A host that is an IP literal: no lookup, as in the runtime.
fn literal_address(ip: IpAddr) -> (CheckResult, Option<DnsOutcome>) {
    use crate::check::Evidence;
    let outcome = DnsOutcome::literal(ip);
    let result = CheckResult {
        check: CheckKind::Dns,
        ok: true,
        seconds: 0.0,
        detail: outcome.detail(),
        reason: None,
    };
    (result, Some(outcome))
}

/// A failure to reach the proxy is the proxy's failure, whatever the step.
fn blame_proxy(mut result: CheckResult, proxy: Option<&Proxy>) -> CheckResult {
    if let (false, Some(proxy)) = (result.ok, proxy) {
        result.reason = Some(Reason::ProxyError);
        result.detail = format!("proxy {proxy}: {}", result.detail);
    }
    result
}

/// A check that could not even start because the endpoint's settings are unusable.
fn config_failure(check: CheckKind, detail: String) -> CheckResult {
    let reason = match check {
        CheckKind::Tls => Reason::TlsHandshake,
        _ => Reason::Unknown,
    };
    CheckResult {
        check,
        ok: false,
        seconds: 0.0,
        detail,
        reason: Some(reason),
    }
}
