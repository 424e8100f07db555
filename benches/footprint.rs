//! The agent's cost on a node and at the registries, measured on the release binary against real
//! TLS registries (distribution) on loopback, each registry name resolved by the testkit's DNS
//! server and its CA trusted through a containerd certs.d directory, as the runtime would.
//!
//! 1. A node at the defaults: 64 registries at the default intervals: readiness (start →
//!    `/readyz` 200), series and bytes on `/metrics` (plain and gzip-asked), scrape latency,
//!    resident memory.
//! 2. CPU per full check (dns → tcp → TLS → `GET /v2/`; `--manifest-interval` equal to
//!    `--interval`, so every round is a full check) against the floor measured in the same run:
//!    a TLS handshake + `GET /v2/` + close_notify done the leanest way (rustls over a TcpStream in
//!    this thread, a full handshake each time, its CPU from /proc/thread-self/schedstat) against
//!    an identical second registry. Interleaved repetitions, medians, the ratio. Connections
//!    (the kernel's SYN count), requests and error lines (the registry's log) per check.
//!
//! Run as root (nft) with `cargo bench --bench footprint`; it prints numbers and asserts nothing
//! (the README quotes them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::agent::{Agent, samples};
use testkit::cost::{self, LogLine, SynCounter, TrustedRegistries, median};
use testkit::http::Client;

/// Registries of the node at the defaults (the default `--max-registries`).
const NODE_REGISTRIES: usize = 64;
/// Scrapes timed for the latency percentiles.
const SCRAPES: usize = 200;
/// Registries checked in the CPU part, every [`INTERVAL`]: all of them (each name has its
/// certs.d directory, so the agent watches every one).
const CPU_REGISTRIES: usize = NODE_REGISTRIES;
const INTERVAL: Duration = Duration::from_secs(1);
const WARM_UP: Duration = Duration::from_secs(5);
/// Interleaved repetitions: an agent window, then a floor burst.
const REPS: usize = 5;
const WINDOW: Duration = Duration::from_secs(10);
const FLOOR_PER_REP: usize = 150;
/// The default interval, for the millicores of a node at the defaults.
const DEFAULT_INTERVAL_SECONDS: f64 = 30.0;

fn main() {
    let names: Vec<String> = (0..NODE_REGISTRIES)
        .map(|i| format!("r{i}.footprint.test"))
        .collect();
    // The first registry is the one the agents watch; the second, identical, gets the floor.
    let site = TrustedRegistries::start(&names, 2);
    let binary = testkit::cli::binary();
    println!(
        "footprint: release binary {:.1} MiB; real distribution registries over TLS on loopback",
        std::fs::metadata(binary).map_or(0, |m| m.len()) as f64 / 1048576.0
    );
    node_at_defaults(&site);
    cpu_per_check(&site);
}

/// Part 1: readiness, series, scrape latency and memory with 64 registries at the defaults.
fn node_at_defaults(site: &TrustedRegistries) {
    let mut args = vec!["--kubernetes".to_owned(), "off".to_owned()];
    for host in site.hosts() {
        args.extend(["--registry".to_owned(), host]);
    }
    let started = Instant::now();
    let agent = start_agent(site, &args);
    let (_, ready) = testkit::wait_for("/readyz 200", Duration::from_secs(60), || {
        (agent.get("/readyz").0 == 200).then(|| ((), started.elapsed()))
    });
    let (metrics, _) = agent.wait_metrics("every registry up", Duration::from_secs(60), |m| {
        let up = samples(m, "pullwatch_registry_up", &[]);
        up.len() == NODE_REGISTRIES && up.iter().all(|v| *v == 1.0)
    });
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let own = series
        .iter()
        .filter(|l| l.starts_with("pullwatch_"))
        .count();
    let client = Client::http(agent.addr());
    let gzip = client
        .request("GET", "/metrics", &[("Accept-Encoding", "gzip")], &[])
        .expect("/metrics with Accept-Encoding: gzip");
    let mut latencies: Vec<f64> = (0..SCRAPES)
        .map(|_| {
            let t = Instant::now();
            let response = client.get("/metrics").expect("/metrics");
            assert_eq!(response.status, 200, "/metrics");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let (rss, peak) = cost::rss(agent.pid());
    println!("a node at the defaults: {NODE_REGISTRIES} registries, --interval 30s");
    println!(
        "  ready (start → /readyz 200)   {:.2} s",
        ready.as_secs_f64()
    );
    println!(
        "  series on /metrics            {} ({own} pullwatch_*, {:.1} per registry)",
        series.len(),
        own as f64 / NODE_REGISTRIES as f64
    );
    println!(
        "  /metrics bytes                {} plain; {} when gzip is asked (content-encoding: {})",
        metrics.len(),
        gzip.body.len(),
        gzip.header("content-encoding").unwrap_or("none")
    );
    println!(
        "  scrape latency ({SCRAPES}, fresh connection each)  p50 {:.2} ms, p99 {:.2} ms",
        latencies[SCRAPES / 2],
        latencies[SCRAPES * 99 / 100]
    );
    println!(
        "  resident memory               {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
}

/// What one agent window or floor burst measured.
struct Rep {
    agent_ms_per_check: f64,
    floor_ms: f64,
    openssl_ms: f64,
    lookup_ms: f64,
    registry_ms_per_check: f64,
    registry_floor_ms: f64,
    connections_per_check: f64,
    requests_per_check: f64,
    get_v2_per_check: f64,
    errors_per_check: f64,
}

/// Part 2: CPU per full check against the floor, interleaved.
fn cpu_per_check(site: &TrustedRegistries) {
    let watched = site.watched();
    let floor_registry = &site.registries[1];
    let mut args = vec![
        "--interval".to_owned(),
        format!("{}s", INTERVAL.as_secs()),
        "--manifest-interval".to_owned(),
        format!("{}s", INTERVAL.as_secs()),
        "--kubernetes".to_owned(),
        "off".to_owned(),
    ];
    for host in site.hosts() {
        args.extend(["--registry".to_owned(), host]);
    }
    let agent = start_agent(site, &args);
    agent.wait_metrics("every registry up", Duration::from_secs(60), |m| {
        let up = samples(m, "pullwatch_registry_up", &[]);
        up.len() == CPU_REGISTRIES && up.iter().all(|v| *v == 1.0)
    });
    std::thread::sleep(WARM_UP);
    let syns = SynCounter::new(watched.port());
    let floor = Floor::new(site, floor_registry.addr());
    let checks = CPU_REGISTRIES as f64 * WINDOW.as_secs_f64() / INTERVAL.as_secs_f64();
    let mut reps = Vec::new();
    for _ in 0..REPS {
        let (log_at, syn_at) = (watched.log().len(), syns.count());
        let (agent_at, registry_at) = (
            cost::process_cpu(agent.pid()),
            cost::process_cpu(watched.pid()),
        );
        std::thread::sleep(WINDOW);
        let agent_cpu = cost::process_cpu(agent.pid()) - agent_at;
        let registry_cpu = cost::process_cpu(watched.pid()) - registry_at;
        let connections = syns.count() - syn_at;
        let lines = cost::classify_log(&watched.log()[log_at..]);
        let requests = lines
            .iter()
            .filter(|l| matches!(l, LogLine::Request { .. }))
            .count();
        let get_v2 = lines
            .iter()
            .filter(|l| matches!(l, LogLine::Request { method, path, .. } if method == "GET" && path == "/v2/"))
            .count();
        let errors = lines.len() - requests;

        let floor_registry_at = cost::process_cpu(floor_registry.pid());
        let floor_cpu = floor.burst(FLOOR_PER_REP);
        let floor_registry_cpu = cost::process_cpu(floor_registry.pid()) - floor_registry_at;
        let lookup_cpu = floor.lookups(FLOOR_PER_REP);
        let openssl_ms = floor.openssl();
        reps.push(Rep {
            agent_ms_per_check: agent_cpu.as_secs_f64() * 1000.0 / checks,
            floor_ms: floor_cpu.as_secs_f64() * 1000.0 / FLOOR_PER_REP as f64,
            openssl_ms,
            lookup_ms: lookup_cpu.as_secs_f64() * 1000.0 / FLOOR_PER_REP as f64,
            registry_ms_per_check: registry_cpu.as_secs_f64() * 1000.0 / checks,
            registry_floor_ms: floor_registry_cpu.as_secs_f64() * 1000.0 / FLOOR_PER_REP as f64,
            connections_per_check: connections as f64 / checks,
            requests_per_check: requests as f64 / checks,
            get_v2_per_check: get_v2 as f64 / checks,
            errors_per_check: errors as f64 / checks,
        });
    }
    let floor_errors = cost::classify_log(&floor_registry.log())
        .iter()
        .filter(|l| !matches!(l, LogLine::Request { .. }))
        .count();
    let (rss, _) = cost::rss(agent.pid());
    let med = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let (agent_ms, floor_ms) = (med(|r| r.agent_ms_per_check), med(|r| r.floor_ms));
    println!(
        "CPU per full check: {CPU_REGISTRIES} registries, --interval {0:?} --manifest-interval {0:?}; \
         {REPS} interleaved reps of a {WINDOW:?} agent window ({checks:.0} checks) and {FLOOR_PER_REP} floor handshakes; medians",
        INTERVAL
    );
    println!(
        "  agent CPU per check            {agent_ms:.3} ms (reps: {})",
        list(reps.iter().map(|r| r.agent_ms_per_check))
    );
    println!(
        "  floor: TLS handshake + GET /v2/ + close_notify, rustls in-process: {floor_ms:.3} ms (reps: {})",
        list(reps.iter().map(|r| r.floor_ms))
    );
    println!(
        "  ratio agent / floor            {:.2}×",
        agent_ms / floor_ms.max(f64::MIN_POSITIVE)
    );
    let openssl_ms = med(|r| r.openssl_ms);
    println!(
        "  floor: TLS handshake + GET /v2/, `openssl s_time -new` (OpenSSL's own client): {openssl_ms:.3} ms (reps: {})",
        list(reps.iter().map(|r| r.openssl_ms))
    );
    println!(
        "  ratio agent / openssl floor    {:.2}×",
        agent_ms / openssl_ms.max(f64::MIN_POSITIVE)
    );
    // The floor does no lookup, a check must: the leanest one, for what is left of the gap.
    let lookup_ms = med(|r| r.lookup_ms);
    println!(
        "  a lookup done the leanest way (A + AAAA, one UDP socket each, in-process): {lookup_ms:.3} ms (reps: {})",
        list(reps.iter().map(|r| r.lookup_ms))
    );
    println!(
        "  ratio agent / (floor + lookup) {:.2}×",
        agent_ms / (floor_ms + lookup_ms).max(f64::MIN_POSITIVE)
    );
    println!(
        "  registry CPU per check         {:.3} ms; per floor handshake+GET {:.3} ms ({:.2}×)",
        med(|r| r.registry_ms_per_check),
        med(|r| r.registry_floor_ms),
        med(|r| r.registry_ms_per_check) / med(|r| r.registry_floor_ms).max(f64::MIN_POSITIVE)
    );
    println!(
        "  per check at the registry: {:.2} TCP connections (nft SYN counter), {:.2} requests ({:.2} GET /v2/), {:.2} error lines (access and error log); the floor left {floor_errors} error lines",
        med(|r| r.connections_per_check),
        med(|r| r.requests_per_check),
        med(|r| r.get_v2_per_check),
        med(|r| r.errors_per_check),
    );
    println!(
        "  resident memory                {:.1} MiB",
        rss as f64 / 1048576.0
    );
    println!(
        "  at the defaults (64 registries every {DEFAULT_INTERVAL_SECONDS} s): {:.2} millicores",
        agent_ms * 64.0 / DEFAULT_INTERVAL_SECONDS
    );
}

/// The agent with the site's global flags and these agent flags.
fn start_agent(site: &TrustedRegistries, args: &[String]) -> Agent {
    let global = site.global_args();
    let global: Vec<&str> = global.iter().map(String::as_str).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&global, &args)
}

fn list(values: impl Iterator<Item = f64>) -> String {
    values
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The leanest client for the floor: one rustls configuration (resumption off, so every
/// handshake is a full one like a check's), a blocking TcpStream, a keep-alive `GET /v2/` read by
/// its Content-Length, then close_notify.
struct Floor {
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    /// The bench's DNS server, and the A and AAAA queries for the registry's name.
    dns: SocketAddr,
    queries: [Vec<u8>; 2],
    name: rustls::pki_types::ServerName<'static>,
    request: Vec<u8>,
    /// The CA's file, for OpenSSL's client.
    ca: String,
}

impl Floor {
    fn new(site: &TrustedRegistries, addr: SocketAddr) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in testkit::http::load_certs(site.ca.cert_path()).expect("the bench CA") {
            roots.add(cert).expect("the bench CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let host = site.hosts().remove(0);
        let name = host.split(':').next().unwrap_or_default().to_owned();
        Self {
            config: Arc::new(config),
            addr,
            dns: site.dns.addr(),
            queries: [query(&name, 1), query(&name, 28)],
            name: rustls::pki_types::ServerName::try_from(name).expect("a DNS name"),
            request: format!(
                "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pullwatch-bench-floor\r\n\r\n"
            )
            .into_bytes(),
            ca: site.ca.cert_path_str().to_owned(),
        }
    }

    /// `n` handshake + GET exchanges; the CPU this thread spent on them.
    fn burst(&self, n: usize) -> Duration {
        let before = cost::thread_cpu();
        for _ in 0..n {
            self.once()
                .unwrap_or_else(|e| panic!("floor exchange with {}: {e}", self.addr));
        }
        cost::thread_cpu() - before
    }

    /// `n` lookups of the registry's name; the CPU this thread spent on them.
    fn lookups(&self, n: usize) -> Duration {
        let before = cost::thread_cpu();
        for _ in 0..n {
            for query in &self.queries {
                ask(self.dns, query).unwrap_or_else(|e| panic!("lookup at {}: {e}", self.dns));
            }
        }
        cost::thread_cpu() - before
    }

    /// OpenSSL's client doing the same exchange, `openssl s_time -new -www /v2/` (a full
    /// handshake per connection, the CA verified, `GET /v2/ HTTP/1.0`): its CPU per connection,
    /// in ms, from two runs of different lengths, so its start-up (loading the library and the
    /// CA) cancels out.
    fn openssl(&self) -> f64 {
        let (short, long) = (self.s_time(1), self.s_time(3));
        let connections = long.1.saturating_sub(short.1).max(1);
        long.0.saturating_sub(short.0).as_secs_f64() * 1000.0 / connections as f64
    }

    /// One `openssl s_time` run of `seconds`: its CPU (user + system, from the parent shell's
    /// children times) and the connections it made.
    fn s_time(&self, seconds: u32) -> (Duration, usize) {
        let script = format!(
            "openssl s_time -connect {} -CAfile {} -verify 2 -new -www /v2/ -time {seconds} 2>&1; \
             echo; echo children $(cut -d' ' -f16,17 /proc/$$/stat)",
            self.addr, self.ca
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh runs openssl s_time");
        let text = String::from_utf8_lossy(&out.stdout);
        let connections = text
            .lines()
            .find_map(|l| {
                l.split_once(" connections in ")
                    .map(|(n, _)| n.trim().to_owned())
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("openssl s_time printed no count: {text}"));
        let ticks: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("children "))
            .map(|t| {
                t.split_whitespace()
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or_else(|| panic!("no children times: {text}"));
        let hz = 100; // USER_HZ, the unit of /proc/PID/stat's times on Linux
        (Duration::from_millis(ticks * 1000 / hz), connections)
    }

    fn once(&self) -> std::io::Result<()> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_nodelay(true)?;
        let conn = rustls::ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&self.request)?;
        let mut response = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = tls.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            response.extend_from_slice(&chunk[..n]);
            if complete(&response) {
                break;
            }
        }
        tls.conn.send_close_notify();
        tls.flush()?;
        Ok(())
    }
}

/// Whether a response's head and its Content-Length of body have arrived.
fn complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    response.len() >= end + 4 + length
}

/// A recursive DNS query for `name` of type `qtype` (1 = A, 28 = AAAA), id 0x5057.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = vec![0x50, 0x57, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// Sends `query` from a fresh UDP socket (as a resolver does, for a random source port) and
/// waits for its answer.
fn ask(server: SocketAddr, query: &[u8]) -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.connect(server)?;
    socket.send(query)?;
    let mut answer = [0u8; 512];
    let n = socket.recv(&mut answer)?;
    match n >= 12 && answer[..2] == query[..2] {
        true => Ok(()),
        false => Err(std::io::Error::other("not an answer to the query")),
    }
}
