//! The agent's own API over its unix socket: `diagnose --agent` reaches the same verdicts as the
//! local run (same JSON fields, same reasons, same text), with every check streamed as it
//! completed; `/api/v1/status` uses the report's field names.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use testkit::agent::Agent;
use testkit::certs::TlsFixtures;
use testkit::cli::Pullwatch;
use testkit::dns::DnsServer;
use testkit::registry::Registry;

const HOST: &str = "registry.pullwatch.test";

/// What must not differ between the agent's and the local run: everything but timings and the
/// evidence text that carries them.
fn verdict(report: &Value) -> Value {
    let endpoints: Vec<Value> = report["endpoints"]
        .as_array()
        .map(|endpoints| {
            endpoints
                .iter()
                .map(|e| {
                    let checks: Vec<Value> = e["checks"]
                        .as_array()
                        .map(|checks| {
                            checks
                                .iter()
                                .map(|c| serde_json::json!([c["check"], c["ok"], c["reason"]]))
                                .collect()
                        })
                        .unwrap_or_default();
                    serde_json::json!([e["endpoint"], e["role"], e["source"], checks])
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "image": report["image"],
        "registry": report["registry"],
        "pullable": report["pullable"],
        "reason": report["reason"],
        "fix": report["fix"],
        "endpoints": endpoints,
    })
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

/// The text report with durations (`12ms`, `1.20s`), which differ between runs, blanked, and
/// the alignment padding around them collapsed.
fn without_durations(text: &str) -> String {
    let blank = |word: &str| {
        let bare = word.trim_end_matches([',', ';', ')']);
        let suffix = &word[bare.len()..];
        let number = bare.trim_end_matches("ms").trim_end_matches('s');
        if number != bare && !number.is_empty() && number.parse::<f64>().is_ok() {
            format!("<t>{suffix}")
        } else {
            word.to_string()
        }
    };
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .map(blank)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn diagnose_through_the_agent_matches_the_local_run() {
    let tls = TlsFixtures::for_host(HOST);
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .start();
    registry.push_image("team/app", "1.0");
    let untrusted = Registry::builder()
        .tls(&tls.unknown_ca.cert_path, &tls.unknown_ca.key_path)
        .start();
    let closed_port = testkit::ports::closed_port();
    let dns = DnsServer::builder().a(HOST, Ipv4Addr::LOCALHOST).start();
    let global = [
        "--resolv-conf",
        dns.resolv_conf_str(),
        "--ca-file",
        tls.ca.cert_path_str(),
        "--timeout",
        "2s",
    ];
    let live = format!("{HOST}:{}", registry.port());
    let images = [
        format!("{live}/team/app:1.0"),
        format!("{live}/team/app:no-such-tag"),
        format!("{HOST}:{}/team/app:1.0", untrusted.port()),
        format!("127.0.0.1:{closed_port}/team/app:1.0"),
        "gone.pullwatch.test/team/app:1.0".to_string(),
        "Not/A:Valid:Reference".to_string(),
    ];
    let agent = Agent::start(&global, &["--interval", "30s", "--registry", &live]);

    let local = Pullwatch::new()
        .args(global)
        .diagnose_json(images.iter().map(String::as_str));
    let out = Pullwatch::new()
        .env("PULLWATCH_LOG", "pullwatch=debug")
        .args([
            "diagnose",
            "--output",
            "json",
            "--agent",
            &agent.socket_url(),
        ])
        .args(images.iter().map(String::as_str))
        .run();
    let remote = (out.exit_code(), testkit::cli::parse_json_lines(&out));
    assert_eq!(
        remote.0, local.0,
        "exit codes differ; stderr:\n{}",
        out.stderr
    );
    // Every check arrived on its own before its image's report.
    let streamed = out
        .stderr
        .lines()
        .filter(|l| l.contains("check done"))
        .count();
    let checks: usize = remote
        .1
        .iter()
        .flat_map(|r| r["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["checks"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(streamed, checks, "stderr:\n{}", out.stderr);
    assert_eq!(remote.1.len(), images.len());
    for (remote, local) in remote.1.iter().zip(&local.1) {
        assert_eq!(
            verdict(remote),
            verdict(local),
            "\nagent: {remote}\nlocal: {local}"
        );
        assert_eq!(keys(remote), keys(local));
    }
    let reasons: Vec<&str> = local
        .1
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("none"))
        .collect();
    eprintln!("reasons: {reasons:?}");
    for (image, reason) in images[2..].iter().zip([
        "tls_unknown_authority",
        "tcp_refused",
        "dns_nxdomain",
        "invalid_reference",
    ]) {
        let report = remote.1.iter().find(|r| {
            r["image"].as_str() == Some(image.as_str())
                || (reason == "invalid_reference" && r["reason"] == reason)
        });
        assert_eq!(
            report.map(|r| r["reason"].clone()),
            Some(Value::from(reason)),
            "{image}"
        );
    }

    // The text report is the local one too.
    let text = |global: &[&str], diagnose: &[&str]| {
        let out = Pullwatch::new()
            .args(global.iter().copied())
            .arg("diagnose")
            .args(diagnose.iter().copied())
            .args(images[..4].iter().map(String::as_str))
            .run();
        (out.exit_code(), without_durations(&out.stdout))
    };
    let socket = agent.socket_url();
    assert_eq!(text(&[], &["--agent", &socket]), text(&global, &[]));

    // `/api/v1/status` speaks the report's language: the same field names, per registry.
    agent.wait_metrics("the first round", Duration::from_secs(30), |m| {
        m.contains("pullwatch_registry_up{")
    });
    let (status, body) = agent.get("/api/v1/status");
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status["node"], testkit::agent::NODE);
    let watched = &status["registries"][0];
    assert_eq!(watched["registry"], live.as_str());
    let mut want = keys(&local.1[0]);
    want.remove("image");
    want.insert("checked_at".into());
    assert_eq!(keys(watched), want);
    assert_eq!(
        keys(&watched["endpoints"][0]),
        keys(&local.1[0]["endpoints"][0])
    );
    assert_eq!(
        keys(&watched["endpoints"][0]["checks"][0]),
        keys(&local.1[0]["endpoints"][0]["checks"][0])
    );
}

#[test]
fn diagnose_without_an_agent_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = format!("unix://{}/nobody.sock", dir.path().display());
    let out = Pullwatch::new()
        .args(["diagnose", "--agent", &socket, "nginx"])
        .timeout(Duration::from_secs(30))
        .run();
    // No verdict, but no usage error either: the command line was right.
    assert_eq!(out.exit_code(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach the agent"),
        "{}",
        out.stderr
    );
    let out = Pullwatch::new()
        .args(["diagnose", "--agent", "http://127.0.0.1:9746", "nginx"])
        .run();
    assert_eq!(out.exit_code(), 2);
    assert!(out.stderr.contains("--agent"), "{}", out.stderr);
}
