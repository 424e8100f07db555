//! The agent's cost on a node: CPU per endpoint check round (dns → tcp → TLS handshake → `/v2/`)
//! and resident memory, measured on the real binary against TLS registries on loopback, then
//! scaled to the defaults (64 registries every 30 s). Run with `cargo bench --bench footprint`;
//! it prints numbers and asserts nothing (the README quotes them).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testkit::agent::{Agent, sample, samples};
use testkit::certs::TestCa;
use testkit::dns::DnsServer;
use testkit::scripted::{Response, ScriptedServer};

/// Registries watched at once (the default `--max-registries` is 64).
const REGISTRIES: usize = 32;
/// The bench's check interval: short, to get many rounds in a short run.
const INTERVAL: Duration = Duration::from_secs(1);
const WARM_UP: Duration = Duration::from_secs(10);
const MEASURE: Duration = Duration::from_secs(60);
/// The defaults the numbers are scaled to.
const DEFAULT_REGISTRIES: f64 = 64.0;
const DEFAULT_INTERVAL_SECONDS: f64 = 30.0;

fn main() {
    let names: Vec<String> = (0..REGISTRIES)
        .map(|i| format!("r{i}.footprint.test"))
        .collect();
    let ca = TestCa::new("pullwatch bench CA");
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaf = ca.valid_leaf(&name_refs);
    let mut dns = DnsServer::builder();
    for name in &names {
        dns = dns.a(name, Ipv4Addr::LOCALHOST);
    }
    let dns = dns.start();
    let servers: Vec<ScriptedServer> = names
        .iter()
        .map(|_| {
            ScriptedServer::builder()
                .route("GET", "/v2/", Response::registry_v2())
                .tls(&leaf.cert_path, &leaf.key_path)
                .start()
        })
        .collect();
    let mut agent_args = vec![
        "--interval".to_string(),
        format!("{}s", INTERVAL.as_secs()),
        "--kubernetes".into(),
        "off".into(),
    ];
    for (name, server) in names.iter().zip(&servers) {
        agent_args.extend(["--registry".into(), format!("{name}:{}", server.port())]);
    }
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--ca-file",
            ca.cert_path_str(),
            "--timeout",
            "2s",
        ],
        &agent_args,
    );
    agent.wait_metrics("every registry up", WARM_UP * 3, |m| {
        samples(m, "pullwatch_registry_up", &[]).len() == REGISTRIES
            && samples(m, "pullwatch_registry_up", &[])
                .iter()
                .all(|v| *v == 1.0)
    });
    std::thread::sleep(WARM_UP);

    let rounds = || -> usize { servers.iter().map(|s| s.requests().len()).sum() };
    let cpu = |m: &str| sample(m, "process_cpu_seconds_total", &[]).expect("process metrics");
    let (rounds_before, cpu_before, started) = (rounds(), cpu(&agent.metrics()), Instant::now());
    std::thread::sleep(MEASURE);
    let metrics = agent.metrics();
    let (rounds_done, cpu_used) = (rounds() - rounds_before, cpu(&metrics) - cpu_before);
    let elapsed = started.elapsed().as_secs_f64();
    let rss = sample(&metrics, "process_resident_memory_bytes", &[]).expect("process metrics");

    let per_round = cpu_used / rounds_done.max(1) as f64;
    let default_millicores = per_round * DEFAULT_REGISTRIES / DEFAULT_INTERVAL_SECONDS * 1000.0;
    println!(
        "footprint: {REGISTRIES} TLS registries, one round each per {INTERVAL:?}, {elapsed:.0} s"
    );
    println!("  endpoint rounds          {rounds_done}");
    println!(
        "  agent CPU                {cpu_used:.2} s ({:.1} millicores)",
        cpu_used / elapsed * 1000.0
    );
    println!("  CPU per endpoint round   {:.2} ms", per_round * 1000.0);
    println!("  resident memory          {:.1} MiB", rss / 1048576.0);
    println!(
        "  at the defaults ({DEFAULT_REGISTRIES} registries every {DEFAULT_INTERVAL_SECONDS} s): {default_millicores:.2} millicores"
    );
}
