//! containerd's HTTPS-first hosts (a registry on a loopback port, an `http://` host with TLS
//! settings, from 1.6.25 / 1.7.7 / 2.0): HTTPS is tried, and plain HTTP only when the server
//! answered the hello in plain HTTP (or, by version, the handshake timed out or port 443 could
//! not be reached). Debian's containerd 1.6.20 predates it, so the version is given by
//! `--runtime-version`; the registries are real.

use serde_json::Value;
use testkit::certs::{TestCa, TlsFixtures};
use testkit::cli::Pullwatch;
use testkit::registry::Registry;

use crate::runtime_route::{check_named, checks, detail};

/// `diagnose --output json` of `image` under `version`'s rules, hosts.toml from `certs_dir`.
fn diagnose_as(version: &str, certs_dir: &std::path::Path, image: &str) -> (i32, Value) {
    let (code, reports) = Pullwatch::new()
        .args([
            "--runtime-endpoint",
            "unix:///nonexistent/pullwatch-test.sock",
            "--runtime-version",
            version,
            "--containerd-certs-dir",
            certs_dir.to_str().expect("UTF-8 path"),
            "--timeout",
            "5s",
        ])
        .diagnose_json([image]);
    assert_eq!(reports.len(), 1, "{reports:?}");
    (code, reports.into_iter().next().expect("one report"))
}

/// A plain-HTTP registry on a loopback port: 2.0 tries HTTPS, the server answers in plain HTTP,
/// and the pull goes on over HTTP on the same port (one endpoint, the tls step says so); 1.6.20
/// talks plain HTTP from the start.
#[test]
fn a_plain_http_answer_falls_back_to_http_on_the_same_port() {
    let registry = Registry::start();
    registry.push_image("team/app", "1.0");
    let name = registry.addr().to_string();
    let image = format!("{name}/team/app:1.0");
    let certs = tempfile::tempdir().expect("tempdir");

    let (code, report) = diagnose_as("containerd/2.0.0", certs.path(), &image);
    assert_eq!(code, 0, "{report}");
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{report}");
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["endpoint"], format!("https://{name}"), "{report}");
    let tls = detail(check_named(endpoint, "tls"));
    assert!(
        tls.contains("server gave HTTP response to HTTPS client")
            && tls.contains(&format!(
                "falls back to plain HTTP (HTTP on port {} when the server answers plain HTTP or the TLS handshake times out)",
                registry.port()
            )),
        "{report}"
    );
    assert!(checks(endpoint).iter().all(|(_, ok, _)| *ok), "{report}");
    // The registry saw the HTTP requests the fallback made.
    assert!(
        registry
            .access_log()
            .iter()
            .any(|entry| entry.path.starts_with("/v2/team/app/manifests/1.0")),
        "{}",
        registry.log()
    );

    let (code, report) = diagnose_as("containerd/1.6.20", certs.path(), &image);
    assert_eq!(code, 0, "{report}");
    let endpoint = &report["endpoints"][0];
    assert_eq!(endpoint["endpoint"], format!("http://{name}"), "{report}");
    assert!(check_named(endpoint, "tls").is_none(), "{report}");
}

/// An `http://` host with a `ca` whose HTTPS answer is a certificate the CA did not sign: 2.0
/// does not fall back (only a plain-HTTP answer, a handshake timeout or an unreachable 443 do),
/// so the verdict is the certificate's, not HTTP's.
#[test]
fn a_certificate_error_is_not_rescued_by_http() {
    let tls = TlsFixtures::for_host("127.0.0.1");
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .start();
    registry.push_image("team/app", "1.0");
    let name = registry.addr().to_string();
    let stranger = TestCa::new("pullwatch stranger CA");
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path().join(&name);
    std::fs::create_dir_all(&dir).expect("host dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{name}\"\nca = \"{}\"\n",
            stranger.cert_path_str()
        ),
    )
    .expect("write hosts.toml");

    let (code, report) = diagnose_as(
        "containerd/2.0.0",
        certs.path(),
        &format!("{name}/team/app:1.0"),
    );
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["reason"], "tls_unknown_authority", "{report}");
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "no HTTP endpoint after it: {report}");
    assert_eq!(
        endpoints[0]["endpoint"],
        format!("https://{name}"),
        "{report}"
    );
    assert!(check_named(&endpoints[0], "http").is_none(), "{report}");

    // With the CA that signed it, HTTPS passes and nothing falls back.
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{name}\"\nca = \"{}\"\n",
            tls.ca.cert_path_str()
        ),
    )
    .expect("write hosts.toml");
    let (code, report) = diagnose_as(
        "containerd/2.0.0",
        certs.path(),
        &format!("{name}/team/app:1.0"),
    );
    assert_eq!(code, 0, "{report}");
    assert!(
        detail(check_named(&report["endpoints"][0], "tls")).contains(", verified;"),
        "{report}"
    );
}

/// An `http://` host written without a port, with TLS settings: 2.0 (and 1.7.24+) tries HTTPS on
/// 443 and, when nothing answers there, plain HTTP on 80; 1.7.7 tried 443 without that retry;
/// 1.7.23 and 1.6.20 talk plain HTTP on 80 from the start.
#[test]
fn an_unreachable_443_falls_back_to_port_80_when_no_port_is_written() {
    // An address of this test's own on the loopback network, so port 80 is free.
    let pid = std::process::id();
    let ip = std::net::Ipv4Addr::new(127, 77, (pid >> 8) as u8, (pid as u8) | 1);
    let registry = Registry::builder().listen_ip(ip).port(80).start();
    registry.push_image("team/app", "1.0");
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path().join("reg.example");
    std::fs::create_dir_all(&dir).expect("host dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://{ip}\"\nskip_verify = true\n[host]\n"),
    )
    .expect("write hosts.toml");
    let image = "reg.example/team/app:1.0";

    let (code, report) = diagnose_as("containerd/2.0.0", certs.path(), image);
    assert_eq!(code, 0, "{report}");
    let endpoint = &report["endpoints"][0];
    assert_eq!(endpoint["endpoint"], format!("https://{ip}"), "{report}");
    let tcp = detail(check_named(endpoint, "tcp"));
    assert!(
        tcp.contains("HTTPS to port 443:")
            && tcp.contains("port 443 cannot be reached")
            && tcp.contains(&format!("{ip}:80 ok")),
        "{report}"
    );
    assert!(check_named(endpoint, "tls").is_none(), "{report}");

    // 1.7.7 tried HTTPS first without a port too, but retried only after a plain-HTTP answer.
    let (code, report) = diagnose_as("containerd/1.7.7", certs.path(), image);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["reason"], "tcp_refused", "{report}");

    // 1.7.8–1.7.23 (and 1.6.x) try HTTPS first only on a written port other than 80.
    let (code, report) = diagnose_as("containerd/1.7.23", certs.path(), image);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["endpoints"][0]["endpoint"],
        format!("http://{ip}"),
        "{report}"
    );

    let (code, report) = diagnose_as("containerd/1.6.20", certs.path(), image);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["endpoints"][0]["endpoint"],
        format!("http://{ip}"),
        "{report}"
    );
}
