//! The soak (`scripts/soak.sh`): a real agent for N minutes while faults cycle — thousands of
//! half-sent requests on its HTTP port and API socket, its registry going down and up, its DNS
//! failing and silent — sampling its RSS, open fds and threads, which must stay flat.
//!
//! `soak [MINUTES] [SAMPLE_SECONDS]` (defaults 10 and 5); the pullwatch binary is taken from
//! `CARGO_BIN_EXE_pullwatch`. Prints a line per sample and per fault, then the verdict: the largest
//! value of the last quarter against the largest of the first quarter, within a margin. Exit 0 when
//! flat, 1 when not, 2 on bad arguments.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use testkit::agent::Agent;
use testkit::cli::Pullwatch;
use testkit::dns::{Answer, DnsServer};
use testkit::ports::closed_port;
use testkit::registry::Registry;
use testkit::relay::Relay;

/// The registry's name in the soak's DNS.
const REGISTRY_NAME: &str = "soak-registry.pullwatch.test";
/// How long each fault lasts before the next.
const PHASE: Duration = Duration::from_secs(20);
/// Half-sent requests per slow-client phase, on the HTTP port and on the API socket.
const SLOW_HTTP: usize = 1500;
const SLOW_API: usize = 100;
/// RSS may end this much above the first quarter's peak (allocator noise), plus 10 %.
const RSS_SLACK_KB: u64 = 4 * 1024;
/// fds and threads may end this many above the first quarter's peak (a blocking thread, a scrape).
const COUNT_SLACK: u64 = 3;

/// One fault of the cycle.
#[derive(Clone, Copy, Debug)]
enum Fault {
    SlowClients,
    RegistryDown,
    RegistryUp,
    DnsServfail,
    DnsSilent,
    DnsOk,
}

const CYCLE: [Fault; 6] = [
    Fault::SlowClients,
    Fault::RegistryDown,
    Fault::RegistryUp,
    Fault::DnsServfail,
    Fault::DnsSilent,
    Fault::DnsOk,
];

struct Sample {
    rss_kb: u64,
    fds: u64,
    threads: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| match args.get(i) {
        None => Some(default),
        Some(value) => value.parse().ok().filter(|n| *n > 0),
    };
    let (Some(minutes), Some(every)) = (number(0, 10), number(1, 5)) else {
        eprintln!("usage: soak [MINUTES] [SAMPLE_SECONDS] (whole numbers above 0)");
        return ExitCode::from(2);
    };
    let duration = Duration::from_secs(minutes * 60);
    let every = Duration::from_secs(every);

    let registry = Registry::start();
    let mut relay = Relay::start(registry.addr());
    let up = Answer::Addresses {
        v4: vec![Ipv4Addr::LOCALHOST],
        v6: vec![],
    };
    let dns = DnsServer::builder()
        .answer(REGISTRY_NAME, up.clone())
        .start();
    let watched = format!("{REGISTRY_NAME}:{}", relay.port());
    let refused = format!("127.0.0.1:{}", closed_port());
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--insecure-registry",
            &watched,
            "--timeout",
            "2s",
        ],
        &[
            "--kubernetes",
            "off",
            "--interval",
            "2s",
            "--manifest-interval",
            "10s",
            "--registry",
            &watched,
            "--registry",
            &refused,
        ],
    );
    let pid = agent.pid();
    println!(
        "soak: agent pid {pid} on {} for {minutes} min, a sample every {}s, faults every {}s",
        agent.addr(),
        every.as_secs(),
        PHASE.as_secs()
    );

    let started = Instant::now();
    let mut samples = vec![];
    let mut next_sample = started;
    let mut next_fault = started;
    let mut faults = CYCLE.iter().cycle();
    let mut held: (Vec<TcpStream>, Vec<UnixStream>) = (vec![], vec![]);
    while started.elapsed() < duration {
        let now = Instant::now();
        if now >= next_fault {
            let fault = *faults.next().unwrap_or(&Fault::DnsOk);
            // The previous phase's slow clients give up.
            held = (vec![], vec![]);
            match fault {
                Fault::SlowClients => held = slow_clients(agent.addr(), agent.socket_path()),
                Fault::RegistryDown => relay.stop(),
                Fault::RegistryUp => relay.resume(registry.addr()),
                Fault::DnsServfail => dns.set(REGISTRY_NAME, Answer::ServFail),
                Fault::DnsSilent => dns.set(REGISTRY_NAME, Answer::Silent),
                Fault::DnsOk => dns.set(REGISTRY_NAME, up.clone()),
            }
            let diagnosed = diagnose(&agent, &watched);
            println!(
                "t={:>4}s fault {fault:?} (holding {} + {} slow connections); diagnose --agent exit {diagnosed}",
                started.elapsed().as_secs(),
                held.0.len(),
                held.1.len()
            );
            next_fault += PHASE;
        }
        if now >= next_sample {
            let (status, _) = agent.get("/healthz");
            let sample = sample(pid);
            println!(
                "t={:>4}s rss_kb={} fds={} threads={} healthz={status}",
                started.elapsed().as_secs(),
                sample.rss_kb,
                sample.fds,
                sample.threads
            );
            samples.push(sample);
            // A slow fault step may have made it late: no burst of catch-up samples.
            next_sample = (next_sample + every).max(Instant::now());
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    verdict(&samples)
}

/// Half a request header on each of many connections, held open by the caller.
fn slow_clients(addr: SocketAddr, socket: &std::path::Path) -> (Vec<TcpStream>, Vec<UnixStream>) {
    let tcp = (0..SLOW_HTTP)
        .filter_map(|_| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n");
            Some(stream)
        })
        .collect();
    let unix = (0..SLOW_API)
        .filter_map(|_| {
            let mut stream = UnixStream::connect(socket).ok()?;
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n");
            Some(stream)
        })
        .collect();
    (tcp, unix)
}

/// `diagnose --agent` of the watched registry's image: its exit code (0 or 1: it answered).
fn diagnose(agent: &Agent, registry: &str) -> i32 {
    Pullwatch::new()
        .args([
            "diagnose",
            "--agent",
            &agent.socket_url(),
            &format!("{registry}/soak/app:1"),
        ])
        .timeout(Duration::from_secs(60))
        .run()
        .exit_code()
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Sample {
        rss_kb: field("VmRSS"),
        fds,
        threads: field("Threads"),
    }
}

/// One sampled measure and the most its last-quarter peak may be, given the first quarter's.
struct Measure {
    name: &'static str,
    get: fn(&Sample) -> u64,
    allowed: fn(u64) -> u64,
}

/// Flat: each measure's last-quarter peak within its margin of the first quarter's peak.
fn verdict(samples: &[Sample]) -> ExitCode {
    if samples.len() < 8 {
        println!("soak: FAIL: only {} samples; run longer", samples.len());
        return ExitCode::FAILURE;
    }
    let quarter = samples.len() / 4;
    let (first, last) = (&samples[..quarter], &samples[samples.len() - quarter..]);
    let peak = |part: &[Sample], f: fn(&Sample) -> u64| part.iter().map(f).max().unwrap_or(0);
    let measures = [
        Measure {
            name: "rss_kb",
            get: |s| s.rss_kb,
            allowed: |p| p + p / 10 + RSS_SLACK_KB,
        },
        Measure {
            name: "fds",
            get: |s| s.fds,
            allowed: |p| p + COUNT_SLACK,
        },
        Measure {
            name: "threads",
            get: |s| s.threads,
            allowed: |p| p + COUNT_SLACK,
        },
    ];
    let mut flat = true;
    for Measure { name, get, allowed } in measures {
        let (early, late) = (peak(first, get), peak(last, get));
        let ok = late <= allowed(early);
        flat &= ok;
        println!(
            "soak: {name}: first-quarter max {early}, last-quarter max {late}, allowed {} → {}",
            allowed(early),
            if ok { "flat" } else { "GROWING" }
        );
    }
    println!("soak: {}", if flat { "PASS" } else { "FAIL" });
    if flat {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
