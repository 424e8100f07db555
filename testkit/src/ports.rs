//! TCP ports on loopback: free ones for servers a test starts, closed ones for connections
//! that must be refused. The one place the harness and the tests get a port number from.

use std::net::{Ipv4Addr, TcpListener};

/// A port that was free on `ip` a moment ago (bound to port 0, then released), for a server that
/// binds it itself. Another process may take it first: a caller starting a server retries.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
        .port()
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed): connecting is refused.
pub fn closed_port() -> u16 {
    free_port(Ipv4Addr::LOCALHOST)
}
