//! A scripted HTTP/1.1 server on 127.0.0.1:0 for answers the real registry cannot give
//! (503 on /v2/, a non-registry 200, a Bearer token server, 429 with rate-limit headers,
//! a proxy that refuses CONNECT). Plain or TLS; records every request it receives.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::http::server_config;
use crate::server::HttpServer;
pub use crate::server::{Request, Response};

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

struct Route {
    method: String,
    prefix: String,
    handler: Handler,
}

/// Routes and options of a [`ScriptedServer`].
#[derive(Default)]
pub struct ScriptedServerBuilder {
    listen_ip: Option<Ipv4Addr>,
    routes: Vec<Route>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ScriptedServerBuilder {
    /// Answers `method` (or `"*"` for any) on targets starting with `prefix` with
    /// `response`. The longest matching prefix wins; unmatched requests get 404.
    pub fn route(self, method: &str, prefix: &str, response: Response) -> Self {
        self.route_fn(method, prefix, move |_| response.clone())
    }

    /// Like [`ScriptedServerBuilder::route`], computing the answer from the request.
    pub fn route_fn(
        mut self,
        method: &str,
        prefix: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Route {
            method: method.to_owned(),
            prefix: prefix.to_owned(),
            handler: Arc::new(handler),
        });
        self
    }

    /// Listens on `ip` instead of 127.0.0.1 (e.g. a [`crate::netns::Netns::host_ip`]).
    pub fn listen_ip(mut self, ip: Ipv4Addr) -> Self {
        self.listen_ip = Some(ip);
        self
    }

    /// Serves HTTPS with this PEM certificate and key.
    pub fn tls(
        mut self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Self {
        self.tls = Some(server_config(cert.as_ref(), key.as_ref()));
        self
    }

    /// Binds 127.0.0.1:0 (or `listen_ip`:0) and serves on background threads until dropped.
    pub fn start(self) -> ScriptedServer {
        let shared = Arc::new(Shared {
            routes: self.routes,
            requests: Mutex::new(Vec::new()),
        });
        let serving = Arc::clone(&shared);
        let server = HttpServer::start(
            "scripted",
            self.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST),
            self.tls,
            move |req, exchange| {
                if exchange.respond(&serving.answer(req)).is_err() {
                    exchange.close();
                }
            },
        );
        ScriptedServer { server, shared }
    }
}

struct Shared {
    routes: Vec<Route>,
    requests: Mutex<Vec<Request>>,
}

impl Shared {
    fn answer(&self, req: &Request) -> Response {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req.clone());
        let route = self
            .routes
            .iter()
            .filter(|r| {
                (r.method == "*" || r.method.eq_ignore_ascii_case(&req.method))
                    && req.path.starts_with(&r.prefix)
            })
            .fold(None::<&Route>, |best, r| match best {
                Some(b) if b.prefix.len() >= r.prefix.len() => Some(b),
                _ => Some(r),
            });
        match route {
            Some(r) => (r.handler)(req),
            None => Response::new(404)
                .body(format!("no scripted route for {} {}", req.method, req.path)),
        }
    }
}

/// A running scripted server; stops on drop (open connections are shut down).
///
/// ```text
/// let srv = ScriptedServer::builder().route("GET", "/v2/", Response::new(503)).start();
/// // … run pullwatch against srv.addr() …
/// assert_eq!(srv.requests()[0].path, "/v2/");
/// ```
pub struct ScriptedServer {
    server: HttpServer,
    shared: Arc<Shared>,
}

impl ScriptedServer {
    /// Starts describing routes.
    pub fn builder() -> ScriptedServerBuilder {
        ScriptedServerBuilder::default()
    }

    /// An HTTP proxy that answers 403 to everything, CONNECT included.
    pub fn refusing_proxy() -> Self {
        Self::builder()
            .route("*", "", Response::new(403).body("proxy says no"))
            .start()
    }

    /// `127.0.0.1:<port>` (or the `listen_ip`).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// `http://<addr>` or `https://<addr>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A healthy TLS registry (`GET /v2/` answered as a registry) per name, all serving `leaf`, with
/// the names added to `dns` at 127.0.0.1: the many registries a bench watches.
pub fn tls_registries(
    names: &[String],
    leaf: &crate::certs::Leaf,
    dns: crate::dns::DnsServerBuilder,
) -> (crate::dns::DnsServer, Vec<ScriptedServer>) {
    let dns = names
        .iter()
        .fold(dns, |dns, name| dns.a(name, Ipv4Addr::LOCALHOST))
        .start();
    let servers = names
        .iter()
        .map(|_| {
            ScriptedServer::builder()
                .route("GET", "/v2/", Response::registry_v2())
                .tls(&leaf.cert_path, &leaf.key_path)
                .start()
        })
        .collect();
    (dns, servers)
}
