//! A TCP relay on a fixed 127.0.0.1 port in front of a server that comes and goes: while stopped
//! nothing listens there (connections are refused, as when the server is down), and it can
//! resume on the same port towards a new server (a restarted registry gets a new port).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The relay; stopped on drop.
pub struct Relay {
    addr: SocketAddr,
    running: Option<Listening>,
    /// Both ends of every relayed connection, so stopping can cut them.
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

struct Listening {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free port and relays every connection to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("relay address");
        let mut relay = Relay {
            addr,
            running: None,
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        relay.listen(listener, target);
        relay
    }

    /// Its address: what clients are told.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops listening and cuts every relayed connection: the port now refuses.
    pub fn stop(&mut self) {
        if let Some(listening) = self.running.take() {
            listening.stop.store(true, Ordering::SeqCst);
            let _ = listening.acceptor.join();
        }
        for stream in self.connections.lock().expect("relay lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port, relaying to `target`.
    pub fn resume(&mut self, target: SocketAddr) {
        assert!(self.running.is_none(), "the relay is already listening");
        let listener = TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("re-bind the relay on {}: {e}", self.addr));
        self.listen(listener, target);
    }

    fn listen(&mut self, listener: TcpListener, target: SocketAddr) {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::clone(&self.connections);
        let stopping = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => relay(client, target, &connections),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.running = Some(Listening { stop, acceptor });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects `client` to `target` with a copying thread per direction; a client whose target does
/// not answer is closed.
fn relay(client: TcpStream, target: SocketAddr, connections: &Mutex<Vec<TcpStream>>) {
    let _ = client.set_nonblocking(false);
    let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client_copy), Ok(upstream_copy)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    {
        let mut open = connections.lock().expect("relay lock");
        // Forget connections already closed, so the list stays as long as the open ones.
        open.retain(|s| s.peer_addr().is_ok());
        if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
            open.push(a);
            open.push(b);
        }
    }
    std::thread::spawn(move || pipe(client, upstream_copy));
    std::thread::spawn(move || pipe(upstream, client_copy));
}

/// Copies until either side closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
