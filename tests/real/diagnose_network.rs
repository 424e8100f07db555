//! `pullwatch diagnose` through dns → tcp → tls → http against real conditions: the CNCF
//! registry with generated certificates, a real DNS server, netns + nft for dropped, reset
//! and unroutable connections, scripted servers only for what a registry cannot produce.

use std::net::Ipv4Addr;

use serde_json::Value;
use testkit::certs::TlsFixtures;
use testkit::cli::Pullwatch;
use testkit::dns::{DnsServer, DnsServerBuilder};
use testkit::netns::Netns;
use testkit::ports::closed_port;
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

const HOST: &str = "registry.pullwatch.test";
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Runs `diagnose --output json` for one image with the test resolver, CA and a short timeout.
fn diagnose(dns: &DnsServer, ca: Option<&str>, extra: &[&str], image: &str) -> (i32, Value) {
    diagnose_with(Pullwatch::new(), dns, ca, extra, image)
}

fn diagnose_with(
    pullwatch: Pullwatch,
    dns: &DnsServer,
    ca: Option<&str>,
    extra: &[&str],
    image: &str,
) -> (i32, Value) {
    let mut args = vec!["--resolv-conf", dns.resolv_conf_str(), "--timeout", "2s"];
    if let Some(ca) = ca {
        args.extend(["--ca-file", ca]);
    }
    args.extend(extra);
    args.push(image);
    let (code, mut reports) = pullwatch.diagnose_json(args);
    assert_eq!(reports.len(), 1, "one JSON line per image: {reports:?}");
    (code, reports.remove(0))
}

fn dns_with(configure: impl FnOnce(DnsServerBuilder) -> DnsServerBuilder) -> DnsServer {
    configure(DnsServer::builder()).start()
}

/// The checks of the first endpoint, as (check, ok, reason) triples.
fn chain(report: &Value) -> Vec<(String, bool, Option<String>)> {
    report["endpoints"][0]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {report}"))
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default().to_string(),
                c["ok"].as_bool().unwrap_or(false),
                c["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn failing_check(report: &Value) -> Value {
    report["endpoints"][0]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["ok"] == false).cloned())
        .unwrap_or_else(|| panic!("no failing check in {report}"))
}

/// Asserts the report is not pullable for `reason`, raised by `check`.
fn assert_fails(code: i32, report: &Value, check: &str, reason: &str) {
    assert_eq!(code, 1, "exit code 1 when not pullable: {report}");
    assert_eq!(report["pullable"], false, "{report}");
    assert_eq!(report["reason"], reason, "{report}");
    let failed = failing_check(report);
    assert_eq!(failed["check"], check, "{report}");
    assert_eq!(failed["reason"], reason, "{report}");
    assert!(
        report["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "a fix is given: {report}"
    );
}

/// The registry with the image every test asks for pushed to it, so the chain can finish.
fn with_app(registry: Registry) -> Registry {
    registry.push_image("team/app", "1.0");
    registry
}

fn image_at(port: u16) -> String {
    format!("{HOST}:{port}/team/app:1.0")
}

#[test]
fn healthy_tls_registry_is_pullable_with_full_evidence() {
    let tls = TlsFixtures::for_host(HOST);
    let registry = with_app(
        Registry::builder()
            .tls(&tls.valid.cert_path, &tls.valid.key_path)
            .start(),
    );
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));

    let (code, report) = diagnose(
        &dns,
        Some(tls.ca.cert_path_str()),
        &[],
        &image_at(registry.port()),
    );

    assert_eq!(code, 0, "{report}");
    assert_eq!(report["pullable"], true);
    assert_eq!(report["image"], image_at(registry.port()));
    assert_eq!(report["registry"], format!("{HOST}:{}", registry.port()));
    assert!(report["reason"].is_null(), "{report}");
    let endpoint = &report["endpoints"][0];
    assert_eq!(
        endpoint["endpoint"],
        format!("https://{HOST}:{}", registry.port())
    );
    assert_eq!(endpoint["role"], "upstream");
    assert_eq!(endpoint["source"], "default");
    let checks = chain(&report);
    assert!(checks.iter().all(|(_, ok, _)| *ok), "{report}");
    let names: Vec<&str> = checks.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(names, ["dns", "tcp", "tls", "http", "auth", "manifest"]);
    let detail = |i: usize| {
        endpoint["checks"][i]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        detail(0).contains("A 127.0.0.1"),
        "dns evidence names the address: {}",
        detail(0)
    );
    assert!(
        detail(1).contains("1/1 addresses dialled answered"),
        "{}",
        detail(1)
    );
    assert!(
        detail(2).contains("verified")
            && detail(2).contains(HOST)
            && detail(2).contains("expiry in"),
        "{}",
        detail(2)
    );
    assert!(
        detail(3).contains("200") && detail(3).contains("registry/2.0"),
        "{}",
        detail(3)
    );
    for check in endpoint["checks"].as_array().unwrap() {
        assert!(
            check["seconds"]
                .as_f64()
                .is_some_and(|s| (0.0..2.0).contains(&s)),
            "timed: {check}"
        );
    }
}

#[test]
fn text_output_has_marks_cause_and_fix() {
    let tls = TlsFixtures::for_host(HOST);
    let registry = Registry::builder()
        .tls(&tls.expired.cert_path, &tls.expired.key_path)
        .start();
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let out = Pullwatch::new()
        .args([
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--ca-file",
            tls.ca.cert_path_str(),
            "--timeout",
            "2s",
        ])
        .args(["diagnose", &image_at(registry.port())])
        .run();
    assert_eq!(out.exit_code(), 1, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with('✗') && lines[0].contains("NOT pullable"),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("✓ dns")),
        "{}",
        out.stdout
    );
    let tls_line = lines
        .iter()
        .find(|l| l.trim_start().starts_with("✗ tls"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        tls_line.contains("expired") && tls_line.contains("days ago"),
        "certificate expiry in days: {tls_line}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("Cause: tls_expired")),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("Fix: renew the certificate")),
        "{}",
        out.stdout
    );
}

#[test]
fn each_bad_certificate_gets_its_own_reason() {
    let tls = TlsFixtures::for_host(HOST);
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let cases = [
        (&tls.expired, "tls_expired", "expired"),
        (&tls.wrong_name, "tls_hostname_mismatch", "other.invalid"),
        (
            &tls.unknown_ca,
            "tls_unknown_authority",
            "unknown authority",
        ),
    ];
    for (leaf, reason, evidence) in cases {
        let registry = Registry::builder()
            .tls(&leaf.cert_path, &leaf.key_path)
            .start();
        let (code, report) = diagnose(
            &dns,
            Some(tls.ca.cert_path_str()),
            &[],
            &image_at(registry.port()),
        );
        assert_fails(code, &report, "tls", reason);
        let detail = failing_check(&report)["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains(evidence), "{reason}: {detail}");
        assert!(
            detail.contains("leaf "),
            "the rejected chain is still described: {detail}"
        );
    }
}

#[test]
fn the_test_ca_is_not_trusted_without_ca_file() {
    let tls = TlsFixtures::for_host(HOST);
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .start();
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let (code, report) = diagnose(&dns, None, &[], &image_at(registry.port()));
    assert_fails(code, &report, "tls", "tls_unknown_authority");
}

#[test]
fn plain_http_on_the_tls_port_is_a_handshake_failure_unless_declared_insecure() {
    let registry = with_app(Registry::start());
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let image = image_at(registry.port());

    let (code, report) = diagnose(&dns, None, &[], &image);
    assert_fails(code, &report, "tls", "tls_handshake");
    assert!(
        failing_check(&report)["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP"),
        "{report}"
    );

    let insecure = format!("{HOST}:{}", registry.port());
    let (code, report) = diagnose(&dns, None, &["--insecure-registry", &insecure], &image);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["endpoints"][0]["endpoint"],
        format!("http://{insecure}")
    );
    let checks: Vec<String> = chain(&report).into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(
        checks,
        ["dns", "tcp", "http", "auth", "manifest"],
        "no tls check over plain HTTP"
    );
}

#[test]
fn dns_failures() {
    let dns = dns_with(|b| {
        b.servfail("servfail.pullwatch.test")
            .refused("refused.pullwatch.test")
            .silent("silent.pullwatch.test")
            .no_addresses("empty.pullwatch.test")
    });
    let nameserver = format!("nameserver {}", dns.ip());
    // The harness's resolv.conf (timeout:1 attempts:1) gives up on a silent server after 1 s
    // over UDP and 1 s over TCP: a check timeout of 5 s lets the dns check's own answer show.
    let cases: [(&str, &str, &str, &[&str]); 5] = [
        ("typo.pullwatch.test", "2s", "dns_nxdomain", &["NXDOMAIN"]),
        (
            "servfail.pullwatch.test",
            "2s",
            "dns_servfail",
            &["SERVFAIL"],
        ),
        ("refused.pullwatch.test", "2s", "dns_servfail", &["REFUSED"]),
        (
            "silent.pullwatch.test",
            "5s",
            "dns_timeout",
            &["A timed out", "AAAA timed out", &nameserver],
        ),
        (
            "empty.pullwatch.test",
            "2s",
            "dns_no_addresses",
            &["A none"],
        ),
    ];
    for (host, timeout, reason, evidence) in cases {
        let image = format!("{host}/team/app:1.0");
        let args = [
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--timeout",
            timeout,
            &image,
        ];
        let (code, mut reports) = Pullwatch::new().diagnose_json(args);
        assert_eq!(reports.len(), 1, "one JSON line per image: {reports:?}");
        let report = reports.remove(0);
        assert_fails(code, &report, "dns", reason);
        let detail = failing_check(&report)["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            evidence.iter().all(|e| detail.contains(e)),
            "{host}: {evidence:?} in {detail}"
        );
        assert_eq!(
            chain(&report).len(),
            1,
            "nothing runs after a failed dns check: {report}"
        );
    }
}

#[test]
fn dns_cache_is_off_and_families_are_asked_apart() {
    let registry = with_app(Registry::start());
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let insecure = format!("{HOST}:{}", registry.port());
    let image = image_at(registry.port());
    // Two images of the same registry in one run: each is looked up again (A and AAAA each).
    let args = [
        "--resolv-conf",
        dns.resolv_conf_str(),
        "--insecure-registry",
        &insecure,
        image.as_str(),
        image.as_str(),
    ];
    let (code, reports) = Pullwatch::new().diagnose_json(args);
    assert_eq!((code, reports.len()), (0, 2), "{reports:?}");
    let log = dns.query_log();
    let of_type = |t: &str| {
        log.iter()
            .filter(|q| q.name == HOST && format!("{:?}", q.record_type) == t)
            .count()
    };
    assert_eq!(of_type("A"), 2, "{log:?}");
    assert_eq!(of_type("AAAA"), 2, "{log:?}");
}

/// The tcp evidence of a pullable run against a plain-HTTP registry listening on 127.0.0.1
/// alone, with `HOST` resolving to `addresses`; and the registry's port.
fn tcp_detail_resolving_to(addresses: &[Ipv4Addr]) -> (String, u16) {
    let registry = with_app(Registry::start());
    let dns = dns_with(|b| addresses.iter().fold(b, |b, ip| b.a(HOST, *ip)));
    let insecure = format!("{HOST}:{}", registry.port());
    let (code, report) = diagnose(
        &dns,
        None,
        &["--insecure-registry", &insecure],
        &image_at(registry.port()),
    );
    assert_eq!(code, 0, "{report}");
    let tcp = &report["endpoints"][0]["checks"][1];
    assert_eq!(tcp["check"], "tcp", "{report}");
    let detail = tcp["detail"].as_str().unwrap_or_default().to_string();
    (detail, registry.port())
}

#[test]
fn partly_dead_address_set_passes_but_shows() {
    // 127.0.0.2 is on loopback too, but the registry only listens on 127.0.0.1: dialled first,
    // it refuses, and the next address is dialled, as the runtime's dialer does.
    let (detail, _) = tcp_detail_resolving_to(&[Ipv4Addr::new(127, 0, 0, 2), LOOPBACK]);
    assert!(
        detail.starts_with("1/2 addresses dialled answered")
            && detail.contains("127.0.0.2")
            && detail.contains("refused"),
        "{detail}"
    );
    // The first that answers is used: the ones after it are not dialled.
    let (detail, _) = tcp_detail_resolving_to(&[LOOPBACK, Ipv4Addr::new(127, 0, 0, 2)]);
    assert!(
        detail.starts_with("1/1 addresses dialled answered")
            && detail.ends_with("1 more not dialled (the first that answers is used)"),
        "{detail}"
    );
}

#[test]
fn tcp_tries_at_most_four_addresses_per_family() {
    // Six A records on loopback, the listening one fourth: only the first four are kept, and
    // they are dialled in order until the fourth answers (the fifth and sixth are never known).
    let order = [2, 3, 4, 1, 5, 6];
    let six: Vec<Ipv4Addr> = order
        .iter()
        .map(|last| Ipv4Addr::new(127, 0, 0, *last))
        .collect();
    let (detail, port) = tcp_detail_resolving_to(&six);
    let tried: Vec<&str> = detail
        .split_once(": ")
        .map(|(_, each)| each.split(", ").collect())
        .unwrap_or_default();
    assert!(
        detail.starts_with("1/4 addresses dialled answered"),
        "{detail}"
    );
    assert!(!detail.contains("not dialled"), "{detail}");
    assert_eq!(tried.len(), 4, "{detail}");
    for (i, attempt) in tried.iter().enumerate() {
        let addr = format!("127.0.0.{}:{port}", order[i]);
        assert!(
            attempt.starts_with(&addr),
            "attempt {i} is {addr}: {detail}"
        );
    }
}

#[test]
fn tcp_refused_on_loopback() {
    let port = closed_port();
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let (code, report) = diagnose(&dns, None, &[], &image_at(port));
    assert_fails(code, &report, "tcp", "tcp_refused");
}

#[test]
fn firewalled_endpoints_time_out_refuse_or_are_unreachable() {
    let ns = Netns::new();
    let dns = dns_with(|b| b.a(HOST, ns.ip()));
    let cases = [
        (ns.drop_addr().port(), "tcp_timeout", "timed out"),
        (ns.reset_addr().port(), "tcp_refused", "refused"),
        (
            ns.unreachable_addr().port(),
            "tcp_unreachable",
            "unreachable",
        ),
    ];
    for (port, reason, evidence) in cases {
        let (code, report) = diagnose(&dns, None, &[], &image_at(port));
        assert_fails(code, &report, "tcp", reason);
        let detail = failing_check(&report)["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            detail.contains(evidence) && detail.contains(&ns.ip().to_string()),
            "{reason}: {detail}"
        );
    }
}

#[test]
fn http_answers_that_are_not_a_healthy_registry() {
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let unavailable = ScriptedServer::builder()
        .route(
            "GET",
            "/v2/",
            Response::new(503)
                .header("Docker-Distribution-API-Version", "registry/2.0")
                .body("maintenance"),
        )
        .start();
    let web_server = ScriptedServer::builder()
        .route("GET", "/", Response::new(200).body("<html>hello</html>"))
        .start();
    let cases = [
        (&unavailable, "registry_unavailable", "503"),
        (&web_server, "not_a_registry", "200"),
    ];
    for (server, reason, evidence) in cases {
        let insecure = format!("{HOST}:{}", server.port());
        let (code, report) = diagnose(
            &dns,
            None,
            &["--insecure-registry", &insecure],
            &image_at(server.port()),
        );
        assert_fails(code, &report, "http", reason);
        assert!(
            failing_check(&report)["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(evidence),
            "{report}"
        );
        let request = server
            .requests()
            .into_iter()
            .next()
            .expect("the server was asked");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/v2/")
        );
        assert!(
            request
                .header("user-agent")
                .is_some_and(|ua| ua.starts_with("pullwatch/")),
            "{request:?}"
        );
    }
}

#[test]
fn a_refusing_or_dead_proxy_is_a_proxy_error() {
    let tls = TlsFixtures::for_host(HOST);
    let registry = with_app(
        Registry::builder()
            .tls(&tls.valid.cert_path, &tls.valid.key_path)
            .start(),
    );
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let image = image_at(registry.port());
    let refusing = ScriptedServer::refusing_proxy();
    let dead_port = closed_port();
    let cases = [
        (
            format!("http://127.0.0.1:{}", refusing.port()),
            "tls",
            "403",
        ),
        (
            format!("http://user:hunter2@127.0.0.1:{dead_port}"),
            "tcp",
            "refused",
        ),
    ];
    for (proxy, check, evidence) in cases {
        let with_proxy = Pullwatch::new().env("HTTPS_PROXY", proxy.clone());
        let (code, report) =
            diagnose_with(with_proxy, &dns, Some(tls.ca.cert_path_str()), &[], &image);
        assert_fails(code, &report, check, "proxy_error");
        let text = report.to_string();
        assert!(text.contains(evidence), "{proxy}: {report}");
        assert!(
            !text.contains("hunter2"),
            "proxy credentials never shown: {report}"
        );
    }
    assert!(
        refusing
            .requests()
            .iter()
            .any(|r| r.method == "CONNECT" && r.path == format!("{HOST}:{}", registry.port())),
        "the tunnel was asked for the registry: {:?}",
        refusing.requests()
    );

    // NO_PROXY exempts the registry: straight to it, pullable.
    let bypassed = Pullwatch::new()
        .env(
            "HTTPS_PROXY",
            format!("http://127.0.0.1:{}", refusing.port()),
        )
        .env("NO_PROXY", ".pullwatch.test");
    let (code, report) = diagnose_with(bypassed, &dns, Some(tls.ca.cert_path_str()), &[], &image);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn invalid_references_are_explained() {
    let dns = dns_with(|b| b);
    let cases = [
        ("Team/App:1.0", "lowercase"),
        ("ghcr.io/org/app:bad!tag", "invalid reference format"),
        ("https://ghcr.io/org/app", "scheme"),
    ];
    for (image, evidence) in cases {
        let (code, report) = diagnose(&dns, None, &[], image);
        assert_eq!(code, 1, "{report}");
        assert_eq!(report["reason"], "invalid_reference", "{report}");
        assert_eq!(report["image"], image);
        assert!(
            report["summary"]
                .as_str()
                .unwrap_or_default()
                .contains(evidence),
            "{report}"
        );
        assert_eq!(
            report["endpoints"],
            serde_json::json!([]),
            "nothing is contacted: {report}"
        );
    }
    assert!(
        dns.query_log().is_empty(),
        "no lookups for unparseable names"
    );
}

#[test]
fn several_images_one_line_each_and_exit_code_1_when_any_fails() {
    let registry = with_app(Registry::start());
    let dns = dns_with(|b| b.a(HOST, LOOPBACK));
    let insecure = format!("{HOST}:{}", registry.port());
    let good = image_at(registry.port());
    let args = [
        "--resolv-conf",
        dns.resolv_conf_str(),
        "--insecure-registry",
        &insecure,
        good.as_str(),
        "typo.pullwatch.test/x",
    ];
    let (code, reports) = Pullwatch::new().diagnose_json(args);
    assert_eq!(code, 1);
    let verdicts: Vec<(&str, bool)> = reports
        .iter()
        .map(|r| {
            (
                r["image"].as_str().unwrap_or_default(),
                r["pullable"] == true,
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (good.as_str(), true),
            ("typo.pullwatch.test/x:latest", false)
        ]
    );
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    let dns = dns_with(|b| b);
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write resolv.conf");
        path.to_str().expect("tempdir paths are UTF-8").to_string()
    };
    let no_nameserver = write("no-nameserver.conf", b"# nothing\nsearch example.org\n");
    let garbage = write(
        "garbage.conf",
        b"\x00\xff\xfe{\"not\": \"resolv.conf\"}\nfoo bar\n",
    );
    let bad_address = write("bad-address.conf", b"search x\nnameserver dns.example\n");
    let no_nameserver_error =
        format!("pullwatch diagnose: --resolv-conf {no_nameserver}: no nameserver lines");
    let garbage_error = format!("pullwatch diagnose: --resolv-conf {garbage}: no nameserver lines");
    let bad_address_error = format!(
        "pullwatch diagnose: --resolv-conf {bad_address}: line 2: nameserver \"dns.example\" is not an IP address"
    );
    // (arguments, what the first stderr line contains, whether pullwatch itself prints it:
    // then it is the only line; clap's own errors end with a hint line)
    let cases: [(&[&str], &str, bool); 9] = [
        (&["diagnose", ""], "IMAGE #1 is empty", true),
        (
            &[
                "--resolv-conf",
                "/nonexistent/resolv.conf",
                "diagnose",
                "nginx",
            ],
            "--resolv-conf /nonexistent/resolv.conf",
            true,
        ),
        (
            &["--resolv-conf", &no_nameserver, "diagnose", "nginx"],
            &no_nameserver_error,
            true,
        ),
        (
            &["--resolv-conf", &garbage, "diagnose", "nginx"],
            &garbage_error,
            true,
        ),
        (
            &["--resolv-conf", &bad_address, "diagnose", "nginx"],
            &bad_address_error,
            true,
        ),
        (
            &["--timeout", "soon", "diagnose", "nginx"],
            "--timeout",
            false,
        ),
        (
            &["--ca-file", "/nonexistent/ca.pem", "diagnose", "nginx"],
            "/nonexistent/ca.pem",
            true,
        ),
        (
            &["--insecure-registry", "host:99999", "diagnose", "nginx"],
            "--insecure-registry",
            true,
        ),
        (
            &["--insecure-registry", "http://x", "diagnose", "nginx"],
            "--insecure-registry \"http://x\": no scheme allowed: give host[:port]",
            true,
        ),
    ];
    for (args, want, own_line) in cases {
        let mut all: Vec<&str> = args.to_vec();
        if !args.contains(&"--resolv-conf") {
            all.splice(0..0, ["--resolv-conf", dns.resolv_conf_str()]);
        }
        let out = Pullwatch::new().args(all).run();
        assert_eq!(out.exit_code(), 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stdout.is_empty(),
            "{args:?}: no report on a usage error: {}",
            out.stdout
        );
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(want),
            "{args:?}: the first line names the input: {}",
            out.stderr
        );
        if own_line {
            assert_eq!(
                out.stderr.lines().count(),
                1,
                "{args:?}: one line, no log before or after it: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// A local firewall that drops the node's own DNS queries makes `sendto` fail with EPERM: no
/// query ever left, so no answer (`dns_timeout`) with the OS's words, not a SERVFAIL.
#[test]
fn a_dns_query_that_cannot_be_sent_is_a_timeout_with_the_os_error() {
    let ns = Netns::new();
    ns.exec_ok(
        "nft",
        &["-f", "-"],
        Some(
            b"table inet pw_no_dns {\n chain out {\n  type filter hook output priority 0;\n  udp dport 53 drop\n  tcp dport 53 drop\n }\n}\n",
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {}\noptions timeout:1 attempts:1\n",
            ns.host_ip()
        ),
    )
    .expect("resolv.conf");
    let none = dir.path().join("none");
    let binary = testkit::cli::binary().to_str().expect("UTF-8 path");
    let out = ns.exec(
        binary,
        &[
            "--resolv-conf",
            resolv.to_str().expect("UTF-8 path"),
            "--containerd-certs-dir",
            none.to_str().expect("UTF-8 path"),
            "--registries-conf",
            none.to_str().expect("UTF-8 path"),
            "--kubelet-root-dir",
            none.to_str().expect("UTF-8 path"),
            "--timeout",
            "3s",
            "diagnose",
            "--output",
            "json",
            "registry.pullwatch.test/team/app:1.0",
        ],
        None,
    );
    let report: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", out.stdout, out.stderr);
    });
    assert_fails(out.code.unwrap_or(-1), &report, "dns", "dns_timeout");
    let detail = failing_check(&report)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("not sent") && detail.contains("Operation not permitted"),
        "{detail}"
    );
}
