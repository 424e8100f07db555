//! The one hand-written HTTP/1.1 server of the harness, under the scripted servers
//! ([`crate::scripted`]) and the fake Kubernetes API ([`crate::kube_api`]): binds `ip:0`, plain or
//! TLS, a thread per connection, keep-alive, every request handed to a handler that answers
//! whole ([`Exchange::respond`]) or streams ([`Exchange::write_raw`]). Bounded: request heads
//! and bodies are capped, idle connections time out; on drop it stops accepting and shuts
//! every open connection down.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request head or body the server reads.
const MAX_REQUEST: u64 = 1 << 20;
/// An idle connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One received request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: a path (with its query, percent-encoded), an absolute URL
    /// (proxy), or `host:port` (CONNECT).
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::http::find_header(&self.headers, name)
    }
}

/// An answer, written whole with `Content-Length`.
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

/// A handler's side of one request: the connection to answer on.
pub struct Exchange<'a> {
    out: &'a mut dyn Write,
    head_only: bool,
    close: bool,
}

impl Exchange<'_> {
    /// Closes the connection after this request (a `Connection: close` answer).
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Writes `response` after its delay: status line, headers, `Content-Length`,
    /// `Connection: close` when closing, then the body (none for HEAD).
    pub fn respond(&mut self, response: &Response) -> std::io::Result<()> {
        if !response.delay.is_zero() {
            std::thread::sleep(response.delay);
        }
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            response.status,
            reason_phrase(response.status)
        );
        for (k, v) in &response.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        self.out.write_all(head.as_bytes())?;
        if !self.head_only {
            self.out.write_all(&response.body)?;
        }
        self.out.flush()
    }

    /// Writes bytes as they are and flushes: a streamed answer (its head included). The
    /// connection closes after it.
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.close = true;
        self.out.write_all(bytes)?;
        self.out.flush()
    }
}

type Handler = dyn Fn(&Request, &mut Exchange<'_>) + Send + Sync;

/// A running server; stops on drop (open connections are shut down).
pub struct HttpServer {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    handler: Box<Handler>,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Mutex<HashMap<usize, TcpStream>>,
    stopping: AtomicBool,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<usize, TcpStream>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HttpServer {
    /// Binds `ip:0` and serves on background threads until dropped: HTTPS with `tls`, else
    /// plain HTTP. `name` names the threads. Each request goes to `handler`; a request left
    /// unanswered closes its connection.
    pub fn start(
        name: &str,
        ip: Ipv4Addr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Request, &mut Exchange<'_>) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("{name} server cannot bind {ip}:0: {e}"));
        let addr = listener.local_addr().expect("server address");
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            tls: tls.clone(),
            connections: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        let accept = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{addr}"))
            .spawn(move || accept_loop(listener, accept))
            .unwrap_or_else(|e| panic!("spawn the {name} server: {e}"));
        Self {
            addr,
            tls: tls.is_some(),
            shared,
            thread: Some(thread),
        }
    }

    /// `ip:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` or `https://<addr>`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for (_, conn) in self.shared.connections().drain() {
            let _ = conn.shutdown(Shutdown::Both);
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
        shared.connections().insert(id, handle);
        let shared = Arc::clone(&shared);
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
            let _ = stream.shutdown(Shutdown::Both);
            shared.connections().remove(&id);
        });
    }
}

/// Serves requests on one connection until the client closes it, asks to, or the handler does.
fn serve_connection(stream: impl Read + Write, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        let close = req.method == "CONNECT"
            || req
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut exchange = Exchange {
            out: reader.get_mut(),
            head_only: req.method == "HEAD",
            close,
        };
        (shared.handler)(&req, &mut exchange);
        if exchange.close {
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
