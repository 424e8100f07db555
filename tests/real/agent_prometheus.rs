//! The agent as a real Prometheus sees it (scraping gzip, as it always asks): `registry_up` and the
//! failure `reason` of broken registries, the per-check series only while a registry fails (lean
//! by default), a registry stopped and restarted, `node` on every series, and `/healthz` unmoved.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testkit::agent::{Agent, NODE};
use testkit::certs::TlsFixtures;
use testkit::dns::DnsServer;
use testkit::prometheus::{Prometheus, SCRAPE_INTERVAL};
use testkit::registry::Registry;
use testkit::relay::Relay;

const HOST: &str = "registry.pullwatch.test";
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(1);
/// Start-up, the first round and the first scrapes.
const SETTLE: Duration = Duration::from_secs(30);

/// The next round starts within a jittered interval and fails within the timeout; Prometheus
/// sees it at its next scrape. The rest is slack for a loaded test machine.
fn detection_bound() -> Duration {
    INTERVAL.mul_f64(1.1) + TIMEOUT + SCRAPE_INTERVAL + Duration::from_secs(3)
}

fn up(registry: &str) -> String {
    format!("pullwatch_registry_up{{registry=\"{registry}\"}}")
}

fn failure_reason(registry: &str) -> String {
    format!("pullwatch_endpoint_failure_reason{{registry=\"{registry}\"}}")
}

fn check_success(registry: &str) -> String {
    format!("pullwatch_check_success{{registry=\"{registry}\"}}")
}

/// `check=value` of each `check_success` sample, sorted.
fn checks(samples: &[testkit::prometheus::Sample]) -> Vec<String> {
    let mut checks: Vec<String> = samples
        .iter()
        .map(|s| format!("{}={}", s.label("check"), s.value))
        .collect();
    checks.sort();
    checks
}

fn assert_healthy(agent: &Agent) {
    let (status, body) = agent.get("/healthz");
    assert_eq!(status, 200, "/healthz: {body}");
}

#[test]
fn prometheus_sees_registries_up_broken_stopped_and_back() {
    let tls = TlsFixtures::for_host(HOST);
    let start_registry = || {
        Registry::builder()
            .tls(&tls.valid.cert_path, &tls.valid.key_path)
            .start()
    };
    let registry = start_registry();
    let mut relay = Relay::start(registry.addr());
    let untrusted = Registry::builder()
        .tls(&tls.unknown_ca.cert_path, &tls.unknown_ca.key_path)
        .start();
    let closed_port = testkit::ports::closed_port();
    let dns = DnsServer::builder().a(HOST, Ipv4Addr::LOCALHOST).start();

    let live = format!("{HOST}:{}", relay.port());
    let untrusted_registry = format!("{HOST}:{}", untrusted.port());
    let refused = format!("127.0.0.1:{closed_port}");
    let nxdomain = "gone.pullwatch.test";
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let interval = format!("{}s", INTERVAL.as_secs());
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--ca-file",
            tls.ca.cert_path_str(),
            "--timeout",
            &timeout,
        ],
        &[
            "--interval",
            &interval,
            "--registry",
            &live,
            "--registry",
            &untrusted_registry,
            "--registry",
            &refused,
            "--registry",
            nxdomain,
        ],
    );
    let prometheus = Prometheus::scraping(&[agent.addr()]);

    prometheus.wait_value(&up(&live), 1.0, SETTLE);
    for (registry, reason) in [
        (untrusted_registry.as_str(), "tls_unknown_authority"),
        (refused.as_str(), "tcp_refused"),
        (nxdomain, "dns_nxdomain"),
    ] {
        prometheus.wait_value(&up(registry), 0.0, SETTLE);
        let (samples, _) = prometheus.wait_for(&failure_reason(registry), SETTLE, |s| s.len() == 1);
        assert_eq!(
            samples[0].label("reason"),
            reason,
            "{registry}: {samples:?}"
        );
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[0].label("role"), "upstream");
    }
    assert!(prometheus.query(&failure_reason(&live)).is_empty());
    // Lean: a healthy endpoint has no per-check series; a failing one shows where it breaks (an
    // address literal needs no lookup, so dns passed and tcp is where it fails).
    assert!(prometheus.query(&check_success(&live)).is_empty());
    assert!(
        prometheus
            .query(&format!(
                "pullwatch_http_status_code{{registry=\"{live}\"}}"
            ))
            .is_empty()
    );
    let (refused_checks, _) =
        prometheus.wait_for(&check_success(&refused), SETTLE, |s| s.len() == 4);
    assert_eq!(
        checks(&refused_checks),
        ["dns=1", "http=0", "tcp=0", "tls=0"],
        "{refused_checks:?}"
    );
    let tls_info = prometheus.query(&format!("pullwatch_tls_info{{registry=\"{live}\"}}"));
    assert_eq!(tls_info.len(), 1, "{tls_info:?}");
    assert_eq!(tls_info[0].label("verified"), "true");
    let not_after = prometheus.query(&format!(
        "pullwatch_tls_cert_not_after_timestamp_seconds{{registry=\"{live}\"}} - time()"
    ));
    assert!(
        not_after.len() == 1 && not_after[0].value > 86_400.0 * 20.0,
        "the test leaf is valid for 30 days: {not_after:?}"
    );

    // Every series the agent exports carries `node` (Prometheus adds `up` and `scrape_*` itself).
    let unlabelled = prometheus.query(&format!(
        r#"{{job="pullwatch",node!="{NODE}",__name__!~"up|scrape_.*"}}"#
    ));
    assert!(
        unlabelled.is_empty(),
        "series without node=\"{NODE}\": {unlabelled:?}"
    );
    let build = prometheus.query("pullwatch_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    assert!(!build[0].label("revision").is_empty() && !build[0].label("version").is_empty());
    assert!(!prometheus.query("process_resident_memory_bytes").is_empty());
    assert_healthy(&agent);

    // The registry stops: its port refuses.
    drop(registry);
    relay.stop();
    let took = prometheus.wait_value(&up(&live), 0.0, detection_bound());
    eprintln!("registry_up went to 0 in Prometheus {took:?} after the registry stopped");
    // A round in flight when the relay stopped may see its handshake cut (tls_handshake); the
    // next one finds the port refusing.
    let (samples, _) = prometheus.wait_for(&failure_reason(&live), SETTLE, |s| {
        s.len() == 1 && s[0].label("reason") == "tcp_refused"
    });
    assert_eq!(samples[0].value, 1.0, "{samples:?}");
    let (failing, _) = prometheus.wait_for(&check_success(&live), SETTLE, |s| {
        checks(s) == ["dns=1", "http=0", "tcp=0", "tls=0"]
    });
    assert_eq!(failing.len(), 4);
    assert_healthy(&agent);

    // A new registry process behind the same address.
    let registry = start_registry();
    relay.resume(registry.addr());
    let restarted = Instant::now();
    let took = prometheus.wait_value(&up(&live), 1.0, detection_bound());
    eprintln!(
        "registry_up went back to 1 in Prometheus {took:?} ({:?} after the restart)",
        restarted.elapsed()
    );
    prometheus.wait_for(&failure_reason(&live), SETTLE, |s| s.is_empty());
    // Recovered: its per-check series are gone from the scrape, so Prometheus marks them stale.
    prometheus.wait_for(&check_success(&live), SETTLE, |s| s.is_empty());
    let failures = prometheus.query(&format!(
        "pullwatch_check_failures_total{{registry=\"{live}\",reason=\"tcp_refused\"}}"
    ));
    assert!(
        failures.len() == 1 && failures[0].value >= 1.0,
        "the outage stays counted: {failures:?}"
    );
    assert_healthy(&agent);
    let (status, _) = agent.get("/readyz");
    assert_eq!(status, 200);
}
