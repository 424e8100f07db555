//! What a check costs the registry, counted where the registry and the kernel see it: one TCP
//! connection (and one handshake) per connectivity round, closed politely, and `GET /v2/` only when
//! it is due (the manifest interval) or when the connection's checks change state.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::agent::Agent;
use testkit::certs::TestCa;
use testkit::dns::DnsServer;
use testkit::port_gate::PortGate;
use testkit::registry::Registry;

const NAME: &str = "cost.pullwatch.test";

/// A TLS registry on a loopback address of this test's own (`third` tells tests apart), its
/// name in DNS, a gate counting connections to it, and an agent watching it every second with
/// requests due only every hour.
struct Setup {
    registry: Registry,
    gate: PortGate,
    agent: Agent,
    watched: String,
    _dns: DnsServer,
    _ca: TestCa,
}

fn setup(third: u8) -> Setup {
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, third, (pid >> 8) as u8, (pid as u8) | 1);
    let ca = TestCa::new("pullwatch cost CA");
    let leaf = ca.valid_leaf(&[NAME]);
    let registry = Registry::builder()
        .tls(&leaf.cert_path, &leaf.key_path)
        .listen_ip(ip)
        .start();
    let gate = PortGate::new(SocketAddrV4::new(ip, registry.port()));
    let dns = DnsServer::builder().a(NAME, ip).start();
    let watched = format!("{NAME}:{}", registry.port());
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--ca-file",
            ca.cert_path_str(),
            "--timeout",
            "2s",
        ],
        &[
            "--interval",
            "1s",
            "--manifest-interval",
            "1h",
            "--kubernetes",
            "off",
            "--registry",
            &watched,
        ],
    );
    Setup {
        registry,
        gate,
        agent,
        watched,
        _dns: dns,
        _ca: ca,
    }
}

/// The registry's entry in the agent's status, when there is one.
fn status_of(agent: &Agent, watched: &str) -> Option<Value> {
    let (code, body) = agent.get("/api/v1/status");
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    status["registries"]
        .as_array()?
        .iter()
        .find(|r| r["registry"] == watched)
        .cloned()
}

/// Watches the status until `until` holds for the registry's entry, collecting the distinct probes
/// seen; polled far faster than the 1 s interval, so none is missed. A probe is told by its tcp and
/// tls timings: a round that comes within half an interval of the last probe shares its result
/// (and makes no connection), so rounds are not counted by their `checked_at`.
fn rounds_until(
    setup: &Setup,
    rounds: &mut BTreeSet<String>,
    what: &str,
    until: impl Fn(&Value, usize) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(entry) = status_of(&setup.agent, &setup.watched) {
            rounds.insert(probe_key(&entry));
            if until(&entry, rounds.len()) {
                return entry;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in 40 s; {} rounds",
            rounds.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The timings of the entry's tcp and tls records (or its `checked_at` when it has neither).
fn probe_key(entry: &Value) -> String {
    let checks = entry["endpoints"][0]["checks"].as_array();
    let timings: Vec<String> = checks
        .into_iter()
        .flatten()
        .filter(|c| c["check"] == "tcp" || c["check"] == "tls")
        .map(|c| c["seconds"].to_string())
        .collect();
    match timings.is_empty() {
        true => entry["checked_at"].to_string(),
        false => timings.join(" "),
    }
}

fn v2_requests(registry: &Registry) -> usize {
    registry
        .access_log()
        .iter()
        .filter(|e| e.method == "GET" && e.path == "/v2/")
        .count()
}

/// The record of `check` in an endpoint's report.
fn check_record<'a>(endpoint: &'a Value, check: &str) -> &'a Value {
    endpoint["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("a {check} record in {endpoint}"))
}

fn reason(entry: &Value) -> Option<&str> {
    entry["reason"].as_str()
}

#[test]
fn a_round_costs_one_connection_and_sends_no_request_until_one_is_due() {
    let setup = setup(78);
    let mut rounds = BTreeSet::new();
    let first = rounds_until(&setup, &mut rounds, "six probes", |_, n| n >= 6);
    assert_eq!(reason(&first), None, "{first}");
    let before_kill = rounds.len();
    drop(setup.agent);
    // A round in flight when the agent was killed may have connected without being recorded.
    let connections = setup.gate.connections() as usize;
    assert!(
        (before_kill..=before_kill + 1).contains(&connections),
        "{connections} connections for {before_kill} probes: a probe must open exactly one"
    );
    // The first round asks /v2/ (over its own connection); the next ones carry its answer.
    assert_eq!(
        v2_requests(&setup.registry),
        1,
        "{:?}",
        setup.registry.access_log()
    );
    assert_eq!(setup.registry.access_log().len(), 1);
    let endpoint = &first["endpoints"][0];
    let http = check_record(endpoint, "http");
    assert_eq!(http["ok"], true, "{first}");
    // In HTTP/1.1 and without ALPN, as containerd's and CRI-O's Go clients (which never set up
    // HTTP/2 for registries), though this registry would speak HTTP/2.
    let log = setup.registry.log();
    assert!(log.contains("\"GET /v2/ HTTP/1.1\""), "{log}");
    let tls = check_record(endpoint, "tls");
    assert!(
        !tls["detail"].as_str().unwrap_or_default().contains("ALPN"),
        "{tls}"
    );
    // Every connection completed its handshake and was closed with close_notify: the registry
    // logged no error for any of them.
    for complaint in ["TLS handshake error", "http: ", "EOF"] {
        assert!(
            !log.contains(complaint),
            "registry log has {complaint:?}:\n{log}"
        );
    }
}

#[test]
fn a_connection_that_breaks_and_comes_back_asks_v2_once_more() {
    let setup = setup(79);
    let mut rounds = BTreeSet::new();
    rounds_until(&setup, &mut rounds, "two rounds", |_, n| n >= 2);
    assert_eq!(v2_requests(&setup.registry), 1);

    setup.gate.refuse();
    let down = rounds_until(&setup, &mut rounds, "tcp_refused", |e, _| {
        reason(e) == Some("tcp_refused")
    });
    assert_eq!(reason(&down), Some("tcp_refused"), "{down}");
    setup.gate.open();
    let back = rounds_until(&setup, &mut rounds, "up again", |e, _| reason(e).is_none());
    let since = rounds.len();
    rounds_until(&setup, &mut rounds, "three more rounds", |_, n| {
        n >= since + 3
    });
    assert_eq!(reason(&back), None, "{back}");
    // Once at start, once when the chain came back; none for the steady rounds around them.
    assert_eq!(
        v2_requests(&setup.registry),
        2,
        "{:?}",
        setup.registry.access_log()
    );
}
