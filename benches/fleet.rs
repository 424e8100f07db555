//! A fleet against one registry: many release-built `pullwatch agent` processes (one per
//! simulated node, each with its own `--listen` port, API socket and `--node-name`, all started
//! together) check one real distribution registry (TLS, reached by a name from the testkit's DNS
//! server, its CA trusted through a containerd certs.d directory as the runtime would) for a few
//! minutes. The registry's side is what it reports: TCP connections (the kernel's count, an nft
//! rule counting SYNs to the registry's port), TLS handshakes (connections less the handshakes the
//! registry logged as failed), HTTP requests (its access log) and its error lines, per second,
//! per check and scaled to 5,000 nodes at the default intervals; and how the jitter spreads them
//! over the run (per-second counts: max, mean, coefficient of variation against a Poisson
//! process's).
//!
//! Run as root (nft) with `cargo bench --bench fleet`; `FLEET_AGENTS` (default 100) and
//! `FLEET_SECONDS` (the measured part, default 120) size it. It prints and asserts nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::agent::Agent;
use testkit::cost::{self, LogLine, PerSecond, SynCounter, TrustedRegistries};

/// The agents' intervals: a tenth of the defaults (30 s and 5 m), to see many rounds in a short
/// run; every rate is scaled back by [`SCALE`] for the fleet at the defaults.
const INTERVAL: &str = "3s";
const INTERVAL_SECONDS: f64 = 3.0;
const MANIFEST_INTERVAL: &str = "30s";
const SCALE: f64 = 10.0;
/// The fleet the rates are scaled to.
const FLEET: f64 = 5000.0;
const REGISTRY: &str = "registry.fleet.test";

fn main() {
    let count = env_number("FLEET_AGENTS", 100);
    let seconds = env_number("FLEET_SECONDS", 120);
    let site = TrustedRegistries::start(&[REGISTRY.to_owned()], 1);
    let registry = site.watched();
    let syns = SynCounter::new(registry.port());
    let host = site.hosts().remove(0);
    let global = site.global_args();
    let global: Vec<&str> = global.iter().map(String::as_str).collect();
    let agent_args = [
        "--interval",
        INTERVAL,
        "--manifest-interval",
        MANIFEST_INTERVAL,
        "--kubernetes",
        "off",
        "--registry",
        &host,
    ];
    let nodes: Vec<String> = (0..count).map(|i| format!("fleet-node-{i}")).collect();
    let launched = Instant::now();
    let agents = Agent::start_fleet(&nodes, &global, &agent_args);
    let healthy = launched.elapsed();
    testkit::wait_for("every agent ready", Duration::from_secs(120), || {
        agents
            .iter()
            .all(|a| a.get("/readyz").0 == 200)
            .then_some(())
    });
    let ready = launched.elapsed();
    // One more round, then start on a whole second so the kernel's samples and the log's
    // one-second timestamps fall in the same buckets.
    std::thread::sleep(Duration::from_secs_f64(INTERVAL_SECONDS));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()),
    ));
    let (start, first_second) = (Instant::now(), cost::unix_second());
    let cpu = || -> (Duration, Duration) {
        let agents_cpu = agents.iter().map(|a| cost::process_cpu(a.pid())).sum();
        (agents_cpu, cost::process_cpu(registry.pid()))
    };
    let (agents_before, registry_before) = cpu();
    let mut connections = Vec::with_capacity(seconds);
    let mut last = syns.count();
    for k in 1..=seconds {
        let tick = start + Duration::from_secs(k as u64);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let now = syns.count();
        connections.push(now - last);
        last = now;
    }
    let (agents_after, registry_after) = cpu();
    let elapsed = start.elapsed().as_secs_f64();
    // The last requests of the window reach the log a moment later.
    std::thread::sleep(Duration::from_secs(1));
    let log = cost::classify_log(&registry.log());
    drop(agents);

    let in_window = |s: &i64| (first_second..first_second + seconds as i64).contains(s);
    let connections = PerSecond(connections);
    let requests = PerSecond::bucket(
        log.iter().filter_map(|l| match l {
            LogLine::Request { second, .. } => Some(*second),
            _ => None,
        }),
        first_second,
        seconds,
    );
    let mut by_request: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed_handshakes = 0u64;
    for line in &log {
        match line {
            LogLine::Request {
                second,
                method,
                path,
                status,
            } if in_window(second) => {
                *by_request
                    .entry(format!("{method} {path} {status}"))
                    .or_default() += 1;
            }
            LogLine::HandshakeError { second, error } if in_window(second) => {
                failed_handshakes += 1;
                *errors
                    .entry(format!("TLS handshake error: {error}"))
                    .or_default() += 1;
            }
            LogLine::Error { second, text } if in_window(second) => {
                *errors.entry(text.chars().take(100).collect()).or_default() += 1;
            }
            _ => {}
        }
    }

    let secs = seconds as f64;
    let rounds = count as f64 * secs / INTERVAL_SECONDS;
    let fleet = |per_second: f64| per_second * FLEET / count as f64 / SCALE;
    let handshakes = connections.total().saturating_sub(failed_handshakes);
    let get_v2 = by_request
        .iter()
        .filter(|(k, _)| k.starts_with("GET /v2/ "))
        .map(|(_, n)| *n)
        .sum::<u64>();
    let error_lines: u64 = errors.values().sum();

    println!(
        "fleet: {count} agents (release pullwatch, one process each, started together: healthy after {:.1} s, all ready after {:.1} s)",
        healthy.as_secs_f64(),
        ready.as_secs_f64()
    );
    println!(
        "  against one distribution registry (TLS, a name from DNS, its CA from a containerd certs.d dir)"
    );
    println!(
        "  --interval {INTERVAL} --manifest-interval {MANIFEST_INTERVAL}: 1/{SCALE} of the defaults; measured {secs:.0} s (≈{rounds:.0} rounds of {INTERVAL})"
    );
    println!(
        "  the last column is scaled to {FLEET} nodes at the default intervals (× {FLEET}/{count}, ÷ {SCALE})"
    );
    println!(
        "  {:<44} {:>9} {:>10} {:>14}",
        "at the registry", "per s", "per round", "5,000 nodes/s"
    );
    let row = |what: &str, total: u64| {
        let per_second = total as f64 / secs;
        println!(
            "  {what:<44} {per_second:>9.2} {:>10.2} {:>14.1}",
            total as f64 / rounds,
            fleet(per_second)
        );
    };
    row("TCP connections (nft SYN counter)", connections.total());
    row(
        "TLS handshakes completed (connections - failed)",
        handshakes,
    );
    row(
        "TLS handshakes failed (log: TLS handshake error)",
        failed_handshakes,
    );
    row("HTTP requests (access log)", requests.total());
    for (request, n) in &by_request {
        row(&format!("  {request}"), *n);
    }
    row("registry error lines", error_lines);
    for (text, n) in &errors {
        println!("    {n:>6} × {text}");
    }
    let per_agent = get_v2 as f64 / count as f64 / secs;
    if per_agent > 0.0 {
        println!(
            "  GET /v2/ per agent: one every {:.1} s (at the default intervals: one every {:.0} s)",
            1.0 / per_agent,
            SCALE / per_agent
        );
    }
    let millicores = |cpu: Duration| cpu.as_secs_f64() / elapsed * 1000.0;
    let registry_cpu = registry_after.saturating_sub(registry_before);
    println!(
        "  registry CPU: {:.0} millicores, {:.3} ms per round (at {FLEET} nodes: {:.2} cores)",
        millicores(registry_cpu),
        registry_cpu.as_secs_f64() * 1000.0 / rounds,
        fleet(millicores(registry_cpu)) / 1000.0
    );
    println!(
        "  agent CPU: {:.2} millicores each at these intervals",
        millicores(agents_after.saturating_sub(agents_before)) / count as f64
    );
    println!("spread over the run, per second (a Poisson process's CV is 1/√mean):");
    for (what, series) in [("requests", &requests), ("connections", &connections)] {
        println!(
            "  {what:<12} mean {:.1}, max {} ({:.1}× the mean), CV {:.2} (Poisson: {:.2})",
            series.mean(),
            series.max(),
            series.max() as f64 / series.mean().max(f64::MIN_POSITIVE),
            series.cv(),
            1.0 / series.mean().max(f64::MIN_POSITIVE).sqrt()
        );
        println!("    {}", series.sparkline());
        println!("    count:seconds {}", series.histogram());
    }
}

/// A positive whole number from the environment, or `default` when unset.
fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={text:?}: want a positive whole number")),
    }
}
