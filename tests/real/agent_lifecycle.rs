//! The agent's life: bad configuration exits 64 naming the flag, `/readyz` waits for discovery and
//! the registries' checks to start but not for their first round, `/healthz` never depends on a
//! registry, SIGTERM/SIGINT drain and exit 0.

use std::time::{Duration, Instant};

use testkit::agent::{Agent, sample};
use testkit::cli::Pullwatch;
use testkit::dns::DnsServer;
use testkit::ports::closed_port;
use testkit::scripted::{Response, ScriptedServer};

/// The agent's grace period for draining its tasks.
const GRACE: Duration = Duration::from_secs(10);

#[test]
fn bad_configuration_exits_64_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pw.sock");
    let socket = socket.to_str().expect("UTF-8 tempdir");
    let not_a_socket = dir.path().join("file");
    std::fs::write(&not_a_socket, "not a socket").expect("write a file");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let busy = busy.local_addr().expect("its address").to_string();
    let free = format!("127.0.0.1:{}", closed_port());

    struct Case<'a> {
        global: &'a [&'a str],
        agent: &'a [&'a str],
        flag: &'a str,
    }
    let cases = [
        Case {
            global: &[],
            agent: &["--interval", "0s"],
            flag: "--interval",
        },
        Case {
            global: &[],
            agent: &["--interval", "soon"],
            flag: "--interval",
        },
        Case {
            global: &[],
            agent: &["--listen", "nowhere"],
            flag: "--listen",
        },
        Case {
            global: &[],
            agent: &["--listen", &busy],
            flag: "--listen",
        },
        Case {
            global: &[],
            agent: &["--registry", "https://r.example"],
            flag: "--registry",
        },
        Case {
            global: &[],
            agent: &["--registry", "r.example:0"],
            flag: "--registry",
        },
        Case {
            global: &[],
            agent: &["--max-registries", "0"],
            flag: "--max-registries",
        },
        Case {
            global: &[],
            agent: &["--max-failing-series", "many"],
            flag: "--max-failing-series",
        },
        Case {
            global: &[],
            agent: &["--node-name", ""],
            flag: "--node-name",
        },
        Case {
            global: &[],
            agent: &["--api-socket", not_a_socket.to_str().expect("UTF-8")],
            flag: "--api-socket",
        },
        Case {
            global: &["--resolv-conf", "/nonexistent/resolv.conf"],
            agent: &[],
            flag: "--resolv-conf",
        },
        Case {
            global: &["--timeout", "0s"],
            agent: &[],
            flag: "--timeout",
        },
        Case {
            global: &["--runtime-endpoint", "tcp://127.0.0.1:10010"],
            agent: &[],
            flag: "--runtime-endpoint",
        },
        Case {
            global: &[],
            agent: &["--manifest-interval", "0s"],
            flag: "--manifest-interval",
        },
        Case {
            global: &[],
            agent: &["--runtime-check-interval", "often"],
            flag: "--runtime-check-interval",
        },
        Case {
            global: &[],
            agent: &["--no-such-flag"],
            flag: "--no-such-flag",
        },
    ];
    for case in cases {
        let mut args: Vec<&str> = case.global.to_vec();
        args.push("agent");
        // Valid defaults for the rest, so only the flag under test is wrong.
        args.extend([
            "--listen",
            &free,
            "--api-socket",
            socket,
            "--node-name",
            "n1",
        ]);
        args.extend(case.agent);
        let out = Pullwatch::new()
            .args(args.iter().copied())
            .timeout(Duration::from_secs(20))
            .run();
        assert_eq!(out.exit_code(), 64, "{args:?}\nstderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains(case.flag),
            "{args:?}: the message does not name {}:\n{}",
            case.flag,
            out.stderr
        );
    }
    // Only the agent's contract is 64: diagnose keeps its usage exit code.
    let out = Pullwatch::new()
        .args(["--timeout", "0s", "diagnose", "nginx"])
        .run();
    assert_eq!(out.exit_code(), 2, "{}", out.stderr);
}

#[test]
fn readiness_does_not_wait_for_the_first_round_and_health_never_depends_on_registries() {
    // A registry that answers /v2/ only after 6 s: its first round cannot finish sooner.
    let slow = ScriptedServer::builder()
        .route(
            "GET",
            "/v2/",
            Response::registry_v2().delay(Duration::from_secs(6)),
        )
        .start();
    // 64 registries (the default cap), none of the others reachable: readiness must not care.
    let fillers: Vec<String> = (0..60).map(|i| format!("gone{i}.pullwatch.test")).collect();
    let mut dns = DnsServer::builder().silent("blackhole.pullwatch.test");
    for name in &fillers {
        dns = dns.nxdomain(name);
    }
    let dns = dns.start();
    let slow_registry = format!("127.0.0.1:{}", slow.port());
    let refused = format!("127.0.0.1:{}", closed_port());
    let mut args = vec![
        "--interval",
        "1s",
        "--registry",
        &slow_registry,
        "--registry",
        &refused,
        "--registry",
        "blackhole.pullwatch.test",
    ];
    for name in &fillers {
        args.extend(["--registry", name]);
    }
    args.extend(["--registry", "nxdomain.pullwatch.test"]);
    let started = Instant::now();
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--timeout",
            "10s",
            "--insecure-registry",
            &slow_registry,
        ],
        &args,
    );
    // Ready once discovery is done and every registry's checks started: before the slow first
    // round has a result (its round starts within the 1 s interval and takes 6 s).
    let deadline = started + Duration::from_secs(20);
    let status = loop {
        let (code, body) = agent.get("/api/v1/status");
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        if status["ready"] == true {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            agent.get("/readyz").1
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("ready {:?} after start", started.elapsed());
    let checked: Vec<&str> = status["registries"]
        .as_array()
        .expect("registries")
        .iter()
        .filter_map(|r| r["registry"].as_str())
        .collect();
    assert!(
        !checked.contains(&slow_registry.as_str()),
        "ready only after the slow first round: {checked:?}"
    );
    assert_eq!(agent.get("/readyz").0, 200);

    // Until the slow first round is done, and after, with every registry but one broken: alive,
    // and still ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done_at = None;
    while done_at.is_none_or(|at| Instant::now() < at + Duration::from_secs(3)) {
        let (health, body) = agent.get("/healthz");
        assert_eq!(health, 200, "/healthz with broken registries: {body}");
        assert_eq!(agent.get("/readyz").0, 200);
        let slow_up = sample(
            &agent.metrics(),
            "pullwatch_registry_up",
            &[("registry", &slow_registry)],
        );
        if done_at.is_none() && slow_up == Some(1.0) {
            done_at = Some(Instant::now());
        }
        assert!(Instant::now() < deadline, "the slow registry never came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The black hole's lookup runs into the 10 s timeout.
    let (metrics, _) = agent.wait_metrics(
        "the black hole's dns_timeout",
        Duration::from_secs(30),
        |m| {
            let labels = [
                ("registry", "blackhole.pullwatch.test"),
                ("reason", "dns_timeout"),
            ];
            sample(m, "pullwatch_endpoint_failure_reason", &labels).is_some()
        },
    );
    let up = |registry: &str| sample(&metrics, "pullwatch_registry_up", &[("registry", registry)]);
    assert_eq!(up(&slow_registry), Some(1.0), "{metrics}");
    assert_eq!(up(&refused), Some(0.0));
    assert_eq!(up("blackhole.pullwatch.test"), Some(0.0));
    assert_eq!(up("nxdomain.pullwatch.test"), Some(0.0));
    let reason = |registry: &str, reason: &str| {
        sample(
            &metrics,
            "pullwatch_endpoint_failure_reason",
            &[("registry", registry), ("reason", reason)],
        )
    };
    assert_eq!(
        reason("blackhole.pullwatch.test", "dns_timeout"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(reason("nxdomain.pullwatch.test", "dns_nxdomain"), Some(1.0));
    assert_eq!(reason(&refused, "tcp_refused"), Some(1.0));
}

fn drains_on(signal: &str) {
    let dns = DnsServer::builder()
        .silent("blackhole.pullwatch.test")
        .start();
    let refused = format!("127.0.0.1:{}", closed_port());
    let agent = Agent::start(
        &["--resolv-conf", dns.resolv_conf_str(), "--timeout", "5s"],
        &[
            "--interval",
            "1s",
            "--registry",
            &refused,
            "--registry",
            "blackhole.pullwatch.test",
        ],
    );
    // A round has finished, and the blackholed lookup is in flight.
    agent.wait_metrics("a finished round", Duration::from_secs(20), |m| {
        sample(m, "pullwatch_registry_up", &[("registry", &refused)]).is_some()
    });
    let socket = agent.socket_path().to_path_buf();
    assert!(socket.exists());
    let sent = Instant::now();
    agent.signal(signal);
    let out = agent.wait(GRACE + Duration::from_secs(5));
    let took = sent.elapsed();
    assert_eq!(out.exit_code(), 0, "SIG{signal}: stderr:\n{}", out.stderr);
    assert!(
        took < GRACE,
        "SIG{signal}: took {took:?}, more than the grace period"
    );
    assert!(out.stderr.contains("stopped cleanly"), "{}", out.stderr);
    assert!(!socket.exists(), "the API socket is left behind");
    eprintln!("SIG{signal}: exited 0 in {took:?}");
}

#[test]
fn sigterm_drains_and_exits_0_within_the_grace_period() {
    drains_on("TERM");
}

#[test]
fn sigint_drains_and_exits_0_within_the_grace_period() {
    drains_on("INT");
}
