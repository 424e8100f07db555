//! The agent's resident memory on a busy node: the release binary with 64 registries, the real
//! containerd connected (the runtime check on), the pod watch on and 500 failing pods. Run with
//! `cargo bench --bench memory` (root; containerd, docker-registry); prints, asserts nothing.

use std::time::{Duration, Instant};

use testkit::agent::{Agent, samples};
use testkit::certs::TestCa;
use testkit::containerd::Containerd;
use testkit::dns::DnsServer;
use testkit::kube_api::{KubeApi, kubelet_message, pod};
use testkit::registry::Registry;

/// Registries watched in all: the scripted TLS ones, the real registry the node's images come
/// from, and the one the failing pods name (the default `--max-registries` is 64).
const REGISTRIES: usize = 64;
const SCRIPTED: usize = REGISTRIES - 2;
/// Failing pods on this node (the default `--max-failing-series` is 500).
const FAILING_PODS: usize = 500;
/// Short intervals, so a minute holds many rounds of every kind of work.
const INTERVAL: &str = "2s";
const MANIFEST_INTERVAL: &str = "10s";
const RUNTIME_CHECK_INTERVAL: &str = "10s";
const WARM_UP: Duration = Duration::from_secs(20);
const MEASURE: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(1);

/// One reading of `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Default)]
struct Reading {
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

fn read(pid: u32) -> Reading {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    Reading {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        threads: field("Threads:"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn main() {
    // The node: a real registry with two images, both pulled into containerd (tag and digest).
    let registry = Registry::start();
    let registry_name = format!("127.0.0.1:{}", registry.port());
    let containerd = Containerd::start();
    for repository in ["team/app", "team/tool"] {
        let pushed = registry.push_image(repository, "1.0");
        for reference in [
            format!("{registry_name}/{repository}:1.0"),
            format!("{registry_name}/{repository}@{}", pushed.digest),
        ] {
            containerd.pull_plain_http(&reference, None);
        }
    }

    // The registries probed: TLS on loopback, named through the in-process DNS.
    let names: Vec<String> = (0..SCRIPTED).map(|i| format!("r{i}.memory.test")).collect();
    let ca = TestCa::new("pullwatch memory bench CA");
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaf = ca.valid_leaf(&name_refs);
    let (dns, servers) = testkit::scripted::tls_registries(
        &names,
        &leaf,
        DnsServer::builder().nxdomain("missing.test"),
    );

    // 500 pods on this node failing to pull (their registry does not resolve).
    let api = KubeApi::start(testkit::agent::NODE);
    let (image, message) = kubelet_message("dns_nxdomain");
    for i in 0..FAILING_PODS {
        api.apply_pod(
            pod(
                "shop",
                &format!("p{i}"),
                &format!("uid-{i}"),
                testkit::agent::NODE,
            )
            .waiting("app", &image, "ErrImagePull", &message)
            .build(),
        );
    }

    let endpoint = containerd.endpoint();
    let mut agent_args = vec![
        "--kubernetes".to_string(),
        "on".into(),
        "--interval".into(),
        INTERVAL.into(),
        "--manifest-interval".into(),
        MANIFEST_INTERVAL.into(),
        "--runtime-check-interval".into(),
        RUNTIME_CHECK_INTERVAL.into(),
    ];
    for (name, server) in names.iter().zip(&servers) {
        agent_args.extend(["--registry".into(), format!("{name}:{}", server.port())]);
    }
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let agent = Agent::start_with_env(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--ca-file",
            ca.cert_path_str(),
            "--timeout",
            "2s",
            "--runtime-endpoint",
            &endpoint,
            "--insecure-registry",
            &registry_name,
        ],
        &agent_args,
        &[("KUBECONFIG", api.kubeconfig_str())],
    );
    let pid = agent.pid();
    // The readiness wait takes a `Fn`: the peak is kept in a cell.
    let peak = std::cell::Cell::new(Reading::default());
    let track = |r: Reading| {
        let p = peak.get();
        peak.set(Reading {
            rss: p.rss.max(r.rss),
            anon: p.anon.max(r.anon),
            file: p.file.max(r.file),
            threads: p.threads.max(r.threads),
        });
    };
    agent.wait_metrics(
        "every registry watched, the runtime checked, the failing pods counted",
        Duration::from_secs(120),
        |m| {
            track(read(pid));
            samples(m, "pullwatch_registry_up", &[]).len() > SCRIPTED
                && !samples(m, "pullwatch_runtime_check_success", &[]).is_empty()
                && samples(m, "pullwatch_containers_waiting_on_pull", &[]).first()
                    == Some(&(FAILING_PODS as f64))
        },
    );
    let ready_after = started.elapsed();
    let warm_until = Instant::now() + WARM_UP;
    while Instant::now() < warm_until {
        track(read(pid));
        std::thread::sleep(EVERY);
    }
    let mut readings = Vec::new();
    let measure_until = Instant::now() + MEASURE;
    while Instant::now() < measure_until {
        let reading = read(pid);
        track(reading);
        readings.push(reading);
        std::thread::sleep(EVERY);
    }
    let metrics = agent.metrics();
    let runtime_checks = samples(&metrics, "pullwatch_runtime_check_success", &[]);
    let watched = samples(&metrics, "pullwatch_registry_up", &[]);
    let up = watched.iter().filter(|v| **v == 1.0).count();
    let binary = std::fs::metadata(testkit::cli::binary())
        .map(|m| m.len())
        .unwrap_or_default();

    let peak = peak.get();
    let steady = Reading {
        rss: median(readings.iter().map(|r| r.rss).collect()),
        anon: median(readings.iter().map(|r| r.anon).collect()),
        file: median(readings.iter().map(|r| r.file).collect()),
        threads: median(readings.iter().map(|r| r.threads).collect()),
    };
    println!(
        "memory: {} registries ({up} up), containerd with 2 images (runtime check every \
         {RUNTIME_CHECK_INTERVAL}, {} run), {FAILING_PODS} failing pods; all in place after {:.1} s",
        watched.len(),
        runtime_checks.len(),
        ready_after.as_secs_f64()
    );
    println!(
        "  binary                   {:.1} MiB",
        binary as f64 / 1048576.0
    );
    println!(
        "  steady (median of {} s)   VmRSS {:.1} MiB  RssAnon {:.1} MiB  RssFile {:.1} MiB  threads {}",
        MEASURE.as_secs(),
        mib(steady.rss),
        mib(steady.anon),
        mib(steady.file),
        steady.threads
    );
    println!(
        "  peak (from start)        VmRSS {:.1} MiB  RssAnon {:.1} MiB  RssFile {:.1} MiB  threads {}",
        mib(peak.rss),
        mib(peak.anon),
        mib(peak.file),
        peak.threads
    );
    if std::env::var_os("MEMORY_BENCH_SMAPS").is_some() {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        println!("{}", largest_mappings(&smaps, 15));
    }
}

/// The `count` mappings holding the most resident memory, one line each (for finding where it
/// goes: `MEMORY_BENCH_SMAPS=1`).
fn largest_mappings(smaps: &str, count: usize) -> String {
    let mut mappings: Vec<(u64, u64, String)> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_string();
            let size = first
                .split_once('-')
                .and_then(|(a, b)| {
                    Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
                })
                .unwrap_or_default();
            mappings.push((0, size / 1024, name));
        } else if first == "Rss:"
            && let (Some(last), Some(kib)) = (mappings.last_mut(), fields.next())
        {
            last.0 = kib.parse().unwrap_or_default();
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
    mappings
        .iter()
        .take(count)
        .map(|(rss, size, name)| format!("  {rss:>7} KiB of {size:>8} KiB  {name}"))
        .collect::<Vec<_>>()
        .join("\n")
}
