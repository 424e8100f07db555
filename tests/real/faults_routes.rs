//! Routes and runtime config far larger than any real one: a hosts.toml with 1,000 hosts is
//! checked only up to the first endpoint that serves the image (where containerd stops) and at
//! most to the route cap, and a registries.conf with 10,000 tables is read in linear time by
//! `targets` and by the agent, which keeps answering `/healthz`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::agent::Agent;
use testkit::cli::{Pullwatch, parse_json_lines};
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
    std::fs::write(path, text).expect("write config file");
}

/// The first of 1,000 hosts serves the image: diagnose stops there, as containerd does; the other
/// endpoints are listed as not tried (up to the route cap, the rest named in the summary as not
/// checked), and the server behind them never sees a request.
#[test]
fn diagnose_stops_at_the_first_endpoint_that_serves_the_image() {
    let registry = Registry::start();
    registry.push_image("team/app", "1.0");
    let counting = ScriptedServer::builder()
        .route("*", "/", Response::new(503))
        .start();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs.d");
    let mut hosts = format!("[host.\"http://{}\"]\n", registry.addr());
    for i in 1..1000 {
        writeln!(hosts, "[host.\"http://{}/m{i}\"]", counting.addr()).expect("write");
    }
    write(&certs.join("big.test/hosts.toml"), &hosts);
    let none = dir.path().join("none");
    let started = Instant::now();
    let out = with_config(&certs, &none, &none)
        .args([
            "--timeout",
            "2s",
            "diagnose",
            "--output",
            "json",
            "big.test/team/app:1.0",
        ])
        .timeout(Duration::from_secs(120))
        .run();
    let took = started.elapsed();
    let reports = parse_json_lines(&out);
    let report = &reports[0];
    assert_eq!(report["pullable"], true, "{report:#}");
    assert!(took < Duration::from_secs(30), "diagnose took {took:?}");
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 32, "the route cap: {report:#}");
    assert_eq!(
        endpoints[0]["endpoint"],
        format!("http://{}", registry.addr())
    );
    assert!(endpoints[0].get("not_tried").is_none());
    for endpoint in &endpoints[1..] {
        let why = endpoint["not_tried"].as_str().unwrap_or_default();
        assert!(
            why.contains("pullable via") && endpoint["checks"] == Value::Array(vec![]),
            "{endpoint:#}"
        );
    }
    let summary = report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("has 1001 endpoints") && summary.contains("are not checked"),
        "{summary}"
    );
    assert!(
        counting.requests().is_empty(),
        "endpoints after the one that served the image were probed: {} requests",
        counting.requests().len()
    );
    // The text report says so too.
    let text = with_config(&certs, &none, &none)
        .args(["diagnose", "big.test/team/app:1.0"])
        .timeout(Duration::from_secs(120))
        .run();
    assert!(
        text.stdout
            .contains("– not tried: the image is pullable via"),
        "{}",
        text.stdout
    );
}

/// pullwatch reading only these runtime config files and kubelet root (no host file of the
/// machine's own).
fn with_config(certs_dir: &Path, registries_conf: &Path, kubelet_root: &Path) -> Pullwatch {
    Pullwatch::new().args([
        "--containerd-certs-dir",
        certs_dir.to_str().expect("UTF-8"),
        "--registries-conf",
        registries_conf.to_str().expect("UTF-8"),
        "--kubelet-root-dir",
        kubelet_root.to_str().expect("UTF-8"),
    ])
}

/// A registries.conf of `tables` `[[registry]]` tables with a mirror each.
fn huge_registries_conf(path: &Path, tables: usize) {
    let mut text = String::new();
    for i in 0..tables {
        writeln!(
            text,
            "[[registry]]\nlocation = \"r{i}.example\"\n[[registry.mirror]]\nlocation = \"m{i}.example\""
        )
        .expect("write");
    }
    write(path, &text);
}

/// 10,000 tables: `targets` lists every registry with its route (2,000 took 78 s), and an agent
/// given them answers `/healthz` from the start and keeps answering.
#[test]
fn ten_thousand_registries_conf_tables_cost_linear_time() {
    const TABLES: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("registries.conf");
    huge_registries_conf(&conf, TABLES);
    let none = dir.path().join("none");
    let started = Instant::now();
    let out = with_config(&none, &conf, &none)
        .args([
            "--runtime-version",
            "cri-o/1.30.2",
            "targets",
            "--output",
            "json",
        ])
        .timeout(Duration::from_secs(180))
        .run();
    let took = started.elapsed();
    let targets = parse_json_lines(&out);
    assert_eq!(targets.len(), TABLES, "{}", out.stderr);
    let last = targets
        .iter()
        .find(|t| t["registry"] == "r9999.example")
        .expect("the last table's registry");
    assert_eq!(
        last["endpoints"][0]["endpoint"], "https://m9999.example",
        "{last:#}"
    );
    // Generous for a debug build on a loaded machine.
    assert!(took < Duration::from_secs(60), "targets took {took:?}");

    // No name resolves: the agent's rounds fail fast and ask no real DNS server.
    let resolv = dir.path().join("resolv.conf");
    write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    let agent = Agent::start(
        &[
            "--resolv-conf",
            resolv.to_str().expect("UTF-8"),
            "--containerd-certs-dir",
            none.to_str().expect("UTF-8"),
            "--registries-conf",
            conf.to_str().expect("UTF-8"),
            "--runtime-version",
            "cri-o/1.30.2",
            "--timeout",
            "1s",
        ],
        &["--kubernetes", "off", "--interval", "2s"],
    );
    // Several rounds of discovery (each reads the config), /healthz answering promptly all along.
    for _ in 0..20 {
        let asked = Instant::now();
        let (code, body) = agent.get("/healthz");
        assert_eq!(code, 200, "{body}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "/healthz took {:?}",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
