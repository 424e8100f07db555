//! A scripted HTTP/1.1 server on 127.0.0.1:0 for answers the real registry cannot give
//! (503 on /v2/, a non-registry 200, a Bearer token server, 429 with rate-limit headers,
//! a proxy that refuses CONNECT). Plain or TLS; records every request it receives.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::server_config;

/// Longest request head or body the server reads.
const MAX_REQUEST: u64 = 1 << 20;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One received request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: a path, an absolute URL (proxy), or `host:port` (CONNECT).
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (for client timeouts).
    pub delay: Duration,
}

impl Response {
    /// `status` with an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `Content-Type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(value.to_string())
    }

    /// Delays the answer.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// What a registry's `/v2/` says: 200, `{}` and `Docker-Distribution-API-Version`.
    pub fn registry_v2() -> Self {
        Self::new(200)
            .header("Docker-Distribution-API-Version", "registry/2.0")
            .json(&serde_json::json!({}))
    }
}

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
        let ip = self.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("scripted server cannot bind {ip}:0: {e}"));
        let addr = listener.local_addr().expect("scripted server address");
        let shared = Arc::new(Shared {
            routes: self.routes,
            tls: self.tls,
            requests: Mutex::new(Vec::new()),
            connections: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("scripted-{addr}"))
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn scripted server");
        ScriptedServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }
}

struct Shared {
    routes: Vec<Route>,
    tls: Option<Arc<rustls::ServerConfig>>,
    requests: Mutex<Vec<Request>>,
    connections: Mutex<HashMap<usize, TcpStream>>,
    stopping: AtomicBool,
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
/// ```ignore
/// let srv = ScriptedServer::builder().route("GET", "/v2/", Response::new(503)).start();
/// // … run pullwatch against srv.addr() …
/// assert_eq!(srv.requests()[0].path, "/v2/");
/// ```
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        self.addr
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://<addr>` or `https://<addr>`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
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

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for (_, conn) in self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for (id, stream) in listener.incoming().enumerate() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        shared
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, handle);
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
            match shared.tls.clone() {
                None => serve_connection(&stream, &shared),
                Some(config) => {
                    if let Ok(conn) = rustls::ServerConnection::new(config) {
                        let mut tls = rustls::StreamOwned::new(conn, &stream);
                        serve_connection(&mut tls, &shared);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                }
            }
            // The handle kept for Drop shares the socket: close it explicitly.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            shared
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }
}

/// Serves requests on one connection until the client closes it or asks to.
fn serve_connection(stream: impl Read + Write, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        let resp = shared.answer(&req);
        if !resp.delay.is_zero() {
            std::thread::sleep(resp.delay);
        }
        let close = req.method == "CONNECT"
            || req
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if write_response(reader.get_mut(), &req, &resp, close).is_err() || close {
            return;
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut limited = reader.take(MAX_REQUEST);
    let mut line = String::new();
    limited.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if limited.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: u64 = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    limited.take(len).read_to_end(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn write_response(
    stream: &mut impl Write,
    req: &Request,
    resp: &Response,
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        resp.status,
        reason_phrase(resp.status)
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        stream.write_all(&resp.body)?;
    }
    stream.flush()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        407 => "Proxy Authentication Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
