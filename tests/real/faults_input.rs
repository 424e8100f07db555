//! Input that must be refused (issue 13): registry flags a reference or DNS could never carry, a
//! timeout too short for any check, a digest go-digest refuses, and a host name Go's resolver
//! refuses without a query — each refused or reported as the runtime would, naming the input.

use std::time::Duration;

use testkit::cli::Pullwatch;
use testkit::dns::DnsServer;

const RUN_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn bad_registry_and_timeout_flags_are_refused_naming_flag_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pw.sock");
    let socket = socket.to_str().expect("UTF-8 tempdir");
    let long_host = format!("{}test", "a.".repeat(148));
    assert_eq!(long_host.len(), 300);
    let long_label = format!("{}.test", "a".repeat(64));

    struct Case<'a> {
        global: &'a [&'a str],
        agent: &'a [&'a str],
        /// What the message must say besides the flag.
        want: &'a str,
    }
    let cases = [
        Case {
            global: &[],
            agent: &["--registry", "a b"],
            want: "\"a b\": not a registry host[:port]",
        },
        Case {
            global: &[],
            agent: &["--registry", &long_host],
            want: "not a DNS name: 300 characters, more than 253",
        },
        Case {
            global: &[],
            agent: &["--registry", &long_label],
            want: "not a DNS name: label 1 has 64 characters, more than 63",
        },
        Case {
            global: &["--insecure-registry", "registry.test/team"],
            agent: &[],
            want: "\"registry.test/team\": no path allowed",
        },
        Case {
            global: &["--insecure-registry", "a b"],
            agent: &[],
            want: "\"a b\": not a registry host[:port]",
        },
        Case {
            global: &["--timeout", "1ns"],
            agent: &[],
            want: "'1ns'",
        },
        Case {
            global: &["--timeout", "99ms"],
            agent: &[],
            want: "must be between 100ms and 5m",
        },
    ];
    for case in cases {
        let flag = case.global.first().or(case.agent.first()).expect("a flag");
        let mut args: Vec<&str> = case.global.to_vec();
        args.extend([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--api-socket",
            socket,
            "--node-name",
            "n1",
            "--kubernetes",
            "off",
        ]);
        args.extend(case.agent);
        let out = Pullwatch::new()
            .args(args.iter().copied())
            .timeout(RUN_LIMIT)
            .run();
        assert_eq!(out.exit_code(), 64, "{args:?}\nstderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(case.want),
            "{args:?}: want {flag} and {:?} in:\n{}",
            case.want,
            out.stderr
        );
    }

    // The one-shot commands refuse them too, with their usage exit code (2).
    let one_shot: [&[&str]; 5] = [
        &["--insecure-registry", "a b", "targets"],
        &[
            "--insecure-registry",
            "registry.test/team",
            "diagnose",
            "nginx",
        ],
        &["--timeout", "1ns", "diagnose", "nginx"],
        &["targets", "--registry", "a b"],
        &["targets", "--registry", &long_host],
    ];
    for args in one_shot {
        let out = Pullwatch::new()
            .args(args.iter().copied())
            .timeout(RUN_LIMIT)
            .run();
        assert_eq!(out.exit_code(), 2, "{args:?}\nstderr:\n{}", out.stderr);
        let flag = args.iter().find(|a| a.starts_with("--")).expect("a flag");
        assert!(out.stderr.contains(flag), "{args:?}:\n{}", out.stderr);
    }
}

#[test]
fn an_upper_case_digest_is_an_invalid_reference_and_nothing_is_asked() {
    let dns = DnsServer::builder().start();
    let image =
        "registry.test/app@sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789";
    let (code, reports) = Pullwatch::new().timeout(RUN_LIMIT).diagnose_json([
        "--resolv-conf",
        dns.resolv_conf_str(),
        image,
    ]);
    assert_eq!(code, 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(report["reason"], "invalid_reference", "{report}");
    assert!(
        report["summary"]
            .as_str()
            .is_some_and(|s| s.contains("invalid checksum digest format")),
        "{report}"
    );
    assert!(dns.query_log().is_empty(), "{:?}", dns.query_log());
}

/// Go's resolver (the runtime's) refuses a name with a 64-character label as "no such host"
/// without sending a query: `dns_nxdomain`, saying why, and no query on the wire.
#[test]
fn a_name_dns_cannot_carry_is_no_such_host_without_a_query() {
    let dns = DnsServer::builder().start();
    let host = format!("{}.test", "a".repeat(64));
    let (code, reports) = Pullwatch::new().timeout(RUN_LIMIT).diagnose_json([
        "--resolv-conf",
        dns.resolv_conf_str(),
        "--timeout",
        "2s",
        &format!("{host}/app:1.0"),
    ]);
    assert_eq!(code, 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(report["reason"], "dns_nxdomain", "{report}");
    let dns_check = &report["endpoints"][0]["checks"][0];
    assert_eq!(dns_check["check"], "dns", "{report}");
    assert_eq!(dns_check["reason"], "dns_nxdomain", "{report}");
    let detail = dns_check["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("not a DNS name (label 1 has 64 characters, more than 63)")
            && detail.contains("no query sent")
            && detail.contains("no such host"),
        "{report}"
    );
    assert!(dns.query_log().is_empty(), "{:?}", dns.query_log());
}
