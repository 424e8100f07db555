//! An in-process authoritative DNS server for tests, on port 53 of its own loopback
//! address (127.53.X.Y, UDP and TCP), with a scriptable zone and per-name query counts.
//!
//! resolv.conf cannot carry a port, so each server takes a fresh loopback address
//! instead of a fresh port. It writes a `resolv.conf` naming itself for `--resolv-conf`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// TTL of every record served; long, so that a caching resolver would show in the
/// query counts.
const TTL: u32 = 300;

/// How the server answers one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these addresses (A queries get `v4`, AAAA queries get `v6`;
    /// an empty list is a NOERROR with no answer).
    Addresses {
        v4: Vec<Ipv4Addr>,
        v6: Vec<Ipv6Addr>,
    },
    /// NXDOMAIN: the name does not exist (also the answer for every unknown name).
    NxDomain,
    /// SERVFAIL.
    ServFail,
    /// REFUSED.
    Refused,
    /// The query is read and counted but never answered (the client times out).
    Silent,
}

impl Answer {
    /// The name exists but has neither A nor AAAA records.
    pub fn no_addresses() -> Self {
        Answer::Addresses {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

/// One query as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Lower-case name without the trailing dot.
    pub name: String,
    pub record_type: RecordType,
    /// `true` when it came over TCP.
    pub tcp: bool,
}

#[derive(Default)]
struct State {
    zone: HashMap<String, Answer>,
    log: Vec<Query>,
    /// Every AAAA query goes unanswered, whatever the name.
    drop_aaaa: bool,
}

type Shared = Arc<Mutex<State>>;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Collects the zone before the server starts.
#[derive(Default)]
pub struct DnsServerBuilder {
    zone: HashMap<String, Answer>,
    listen_ip: Option<Ipv4Addr>,
    drop_aaaa: bool,
}

impl DnsServerBuilder {
    /// Adds an A record for `name` (a name may have several A and AAAA records).
    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.addresses(name).0.push(ip);
        self
    }

    /// Adds an AAAA record for `name`.
    pub fn aaaa(mut self, name: &str, ip: Ipv6Addr) -> Self {
        self.addresses(name).1.push(ip);
        self
    }

    /// Adds an A or AAAA record depending on the address family.
    pub fn ip(self, name: &str, ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => self.a(name, v4),
            IpAddr::V6(v6) => self.aaaa(name, v6),
        }
    }

    /// `name` answers NXDOMAIN (the default for names never mentioned).
    pub fn nxdomain(self, name: &str) -> Self {
        self.answer(name, Answer::NxDomain)
    }

    /// `name` answers SERVFAIL.
    pub fn servfail(self, name: &str) -> Self {
        self.answer(name, Answer::ServFail)
    }

    /// `name` answers REFUSED.
    pub fn refused(self, name: &str) -> Self {
        self.answer(name, Answer::Refused)
    }

    /// `name` exists but has no A/AAAA: NOERROR with an empty answer.
    pub fn no_addresses(self, name: &str) -> Self {
        self.answer(name, Answer::no_addresses())
    }

    /// Queries for `name` are never answered.
    pub fn silent(self, name: &str) -> Self {
        self.answer(name, Answer::Silent)
    }

    /// Sets the whole answer for `name`, replacing earlier settings.
    pub fn answer(mut self, name: &str, answer: Answer) -> Self {
        self.zone.insert(key(name), answer);
        self
    }

    /// AAAA queries are read and counted but never answered, for every name (a classic broken
    /// server or middlebox: A answers, AAAA times out).
    pub fn drop_aaaa(mut self) -> Self {
        self.drop_aaaa = true;
        self
    }

    /// Listens on port 53 of `ip` instead of a fresh 127.53.X.Y: e.g. a
    /// [`crate::netns::Netns::host_ip`], to serve a pullwatch running inside that netns.
    pub fn listen_ip(mut self, ip: Ipv4Addr) -> Self {
        self.listen_ip = Some(ip);
        self
    }

    fn addresses(&mut self, name: &str) -> (&mut Vec<Ipv4Addr>, &mut Vec<Ipv6Addr>) {
        let entry = self
            .zone
            .entry(key(name))
            .or_insert_with(Answer::no_addresses);
        if !matches!(entry, Answer::Addresses { .. }) {
            *entry = Answer::no_addresses();
        }
        match entry {
            Answer::Addresses { v4, v6 } => (v4, v6),
            _ => unreachable!("set to Addresses just above"),
        }
    }

    /// Binds UDP and TCP port 53 on a fresh 127.53.X.Y address (retrying on
    /// EADDRINUSE) or on the `listen_ip`, writes the resolv.conf, and serves on a
    /// background thread.
    pub fn start(self) -> DnsServer {
        let (ip, udp, tcp) = match self.listen_ip {
            None => bind_fresh_address(),
            Some(ip) => {
                let (udp, tcp) =
                    bind_at(ip).unwrap_or_else(|e| panic!("DNS server cannot bind {ip}:53: {e}"));
                (ip, udp, tcp)
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("pw-dns-")
            .tempdir()
            .expect("DNS tempdir");
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!("nameserver {ip}\noptions timeout:1 attempts:1\n"),
        )
        .expect("write resolv.conf");
        let state: Shared = Arc::new(Mutex::new(State {
            zone: self.zone,
            log: Vec::new(),
            drop_aaaa: self.drop_aaaa,
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dns-{ip}"))
            .spawn(move || serve(udp, tcp, thread_state, stop_rx))
            .expect("spawn DNS thread");
        DnsServer {
            ip,
            resolv_conf,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

/// A running DNS server; stops on drop.
///
/// ```text
/// let dns = DnsServer::builder().a("registry.test", Ipv4Addr::LOCALHOST).servfail("broken.test").start();
/// pullwatch.args(["--resolv-conf", dns.resolv_conf_str()]);
/// assert_eq!(dns.queries("registry.test"), 2); // A and AAAA, no cache
/// ```
pub struct DnsServer {
    ip: Ipv4Addr,
    resolv_conf: PathBuf,
    state: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl DnsServer {
    /// Starts describing the zone.
    pub fn builder() -> DnsServerBuilder {
        DnsServerBuilder::default()
    }

    /// The server's loopback address (it listens on port 53 of it).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `ip:53`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 53))
    }

    /// A resolv.conf with `nameserver <ip>` and `options timeout:1 attempts:1`.
    pub fn resolv_conf(&self) -> &Path {
        &self.resolv_conf
    }

    /// [`DnsServer::resolv_conf`] as a string, for command lines.
    pub fn resolv_conf_str(&self) -> &str {
        self.resolv_conf.to_str().expect("tempdir paths are UTF-8")
    }

    /// Changes how `name` is answered from now on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.lock().zone.insert(key(name), answer);
    }

    /// How many queries (any type, UDP or TCP) arrived for `name`.
    pub fn queries(&self, name: &str) -> usize {
        let name = key(name);
        self.lock().log.iter().filter(|q| q.name == name).count()
    }

    /// Every query received so far, in order.
    pub fn query_log(&self) -> Vec<Query> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds UDP and TCP port 53 on `ip`; `Err` only when one of them is in use.
fn bind_at(ip: Ipv4Addr) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let addr = SocketAddr::from((ip, 53));
    let udp = std::net::UdpSocket::bind(addr).inspect_err(|e| {
        if e.kind() != std::io::ErrorKind::AddrInUse {
            panic!("DNS server cannot bind UDP {addr} (tests must run as root): {e}")
        }
    })?;
    let tcp = std::net::TcpListener::bind(addr).inspect_err(|e| {
        if e.kind() != std::io::ErrorKind::AddrInUse {
            panic!("DNS server cannot bind TCP {addr}: {e}")
        }
    })?;
    udp.set_nonblocking(true).expect("nonblocking UDP");
    tcp.set_nonblocking(true).expect("nonblocking TCP");
    Ok((udp, tcp))
}

/// Picks 127.53.X.Y addresses until both UDP and TCP port 53 bind there.
fn bind_fresh_address() -> (Ipv4Addr, std::net::UdpSocket, std::net::TcpListener) {
    let mut last_err = None;
    for _ in 0..64 {
        let r = crate::entropy();
        let ip = Ipv4Addr::new(127, 53, (r >> 8) as u8, 1 + (r as u8 % 254));
        match bind_at(ip) {
            Ok((udp, tcp)) => return (ip, udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("DNS server found no free 127.53.X.Y:53 after 64 tries: {last_err:?}");
}

fn serve(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    state: Shared,
    stop: oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("DNS runtime");
    rt.block_on(async move {
        let udp = tokio::net::UdpSocket::from_std(udp).expect("tokio UDP");
        let tcp = tokio::net::TcpListener::from_std(tcp).expect("tokio TCP");
        tokio::select! {
            _ = stop => {}
            _ = serve_udp(udp, state.clone()) => {}
            _ = serve_tcp(tcp, state) => {}
        }
    });
    // Dropping the runtime cancels the TCP connection tasks and closes every socket.
}

async fn serve_udp(socket: tokio::net::UdpSocket, state: Shared) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = respond(&buf[..len], &state, false) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, state: Shared) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok(len) = stream.read_u16().await else {
                    return;
                };
                let mut msg = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut msg).await.is_err() {
                    return;
                }
                if let Some(reply) = respond(&msg, &state, true) {
                    let Ok(reply_len) = u16::try_from(reply.len()) else {
                        return;
                    };
                    if stream.write_u16(reply_len).await.is_err()
                        || stream.write_all(&reply).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
}

/// Decodes one query, logs it and encodes the answer (`None`: stay silent).
fn respond(bytes: &[u8], state: &Shared, tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.clone());
    if request.edns.is_some() {
        response.set_edns(Edns::new());
    }
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    let name = key(&query.name().to_ascii());
    let answer = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.log.push(Query {
            name: name.clone(),
            record_type: query.query_type(),
            tcp,
        });
        if st.drop_aaaa && query.query_type() == RecordType::AAAA {
            Answer::Silent
        } else {
            st.zone.get(&name).cloned().unwrap_or(Answer::NxDomain)
        }
    };
    let owner = query.name().clone();
    match answer {
        Answer::Silent => return None,
        Answer::ServFail => response.metadata.response_code = ResponseCode::ServFail,
        Answer::Refused => response.metadata.response_code = ResponseCode::Refused,
        Answer::NxDomain => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa());
        }
        Answer::Addresses { v4, v6 } => {
            let records: Vec<Record> = match query.query_type() {
                RecordType::A => v4
                    .into_iter()
                    .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip))))
                    .collect(),
                RecordType::AAAA => v6
                    .into_iter()
                    .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::AAAA(AAAA(ip))))
                    .collect(),
                _ => Vec::new(),
            };
            if records.is_empty() {
                response.add_authority(soa());
            }
            response.add_answers(records);
        }
    }
    response.to_vec().ok()
}

/// The SOA sent with negative answers (RFC 2308), owned by the root.
fn soa() -> Record {
    let ns = Name::from_ascii("ns.pullwatch.test.").expect("static name");
    let mbox = Name::from_ascii("hostmaster.pullwatch.test.").expect("static name");
    Record::from_rdata(
        Name::root(),
        TTL,
        RData::SOA(SOA::new(ns, mbox, 1, 3600, 600, 86400, 0)),
    )
}
