//! What the agent exports about a registry that answers, but badly: the `/v2/` status is
//! kept even when the http check fails (a 503 is the evidence), next to the failure reason; about a
//! healthy one, the lean set unless `--metrics-detail`; and `/metrics` gzip-encoded when asked.

use std::io::Read;
use std::net::Ipv4Addr;
use std::time::Duration;

use testkit::agent::{Agent, sample, samples};
use testkit::certs::TlsFixtures;
use testkit::dns::DnsServer;
use testkit::http::Client;
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

#[test]
fn a_failing_v2_still_exports_its_status_code() {
    let unavailable = ScriptedServer::builder()
        .route(
            "GET",
            "/v2/",
            Response::new(503).header("Docker-Distribution-API-Version", "registry/2.0"),
        )
        .start();
    let registry = format!("flaky.pullwatch.test:{}", unavailable.port());
    let dns = DnsServer::builder()
        .a("flaky.pullwatch.test", Ipv4Addr::LOCALHOST)
        .start();
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--timeout",
            "2s",
            "--insecure-registry",
            &registry,
        ],
        &[
            "--interval",
            "1s",
            "--kubernetes",
            "off",
            "--registry",
            &registry,
        ],
    );
    let endpoint = format!("http://{registry}");
    let labels = [
        ("registry", registry.as_str()),
        ("endpoint", endpoint.as_str()),
    ];
    // The round's series are written one after another: wait for its last one too.
    let (metrics, _) = agent.wait_metrics("the /v2/ status", Duration::from_secs(20), |m| {
        sample(m, "pullwatch_http_status_code", &labels).is_some()
            && sample(m, "pullwatch_registry_up", &[("registry", &registry)]).is_some()
    });
    assert_eq!(
        sample(&metrics, "pullwatch_http_status_code", &labels),
        Some(503.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_registry_up",
            &[("registry", &registry)]
        ),
        Some(0.0)
    );
    let reason = [
        ("registry", registry.as_str()),
        ("reason", "registry_unavailable"),
    ];
    assert_eq!(
        sample(&metrics, "pullwatch_endpoint_failure_reason", &reason),
        Some(1.0)
    );
}

#[test]
fn a_new_hosts_toml_is_discovered_without_waiting_for_the_interval() {
    let registry = Registry::start();
    let name = format!("127.0.0.1:{}", registry.port());
    let dns = DnsServer::builder().start();
    let certs = tempfile::tempdir().expect("tempdir");
    let certs_dir = certs.path().to_str().expect("UTF-8 tempdir");
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--timeout",
            "2s",
            "--containerd-certs-dir",
            certs_dir,
        ],
        // An hour between discoveries: only the change to the files can bring the registry in.
        &["--interval", "1h", "--kubernetes", "off"],
    );
    let up = [("registry", name.as_str())];
    assert_eq!(sample(&agent.metrics(), "pullwatch_registry_up", &up), None);

    let dir = certs.path().join(&name);
    std::fs::create_dir(&dir).expect("registry dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://{name}\"\n"),
    )
    .expect("hosts.toml");
    let (metrics, took) = agent.wait_metrics(
        "the configured registry checked",
        Duration::from_secs(20),
        |m| sample(m, "pullwatch_registry_up", &up).is_some(),
    );
    eprintln!("discovered {took:?} after hosts.toml was written");
    assert_eq!(
        sample(&metrics, "pullwatch_registry_up", &up),
        Some(1.0),
        "{metrics}"
    );
    let endpoint = format!("http://{name}");
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_endpoint_up",
            &[
                ("registry", &name),
                ("endpoint", &endpoint),
                ("role", "upstream")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// The metric name of every sample about `registry`, sorted.
fn series_of(exposition: &str, registry: &str) -> Vec<String> {
    let label = format!("registry=\"{registry}\"");
    let mut names: Vec<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(|l| l.split('{').next().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// Every sample line's name and labels, without the process's own (CPU and memory move).
fn label_sets(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[test]
fn a_healthy_registry_is_lean_unless_detail_is_asked_and_metrics_gzip_when_asked() {
    const HOST: &str = "lean.pullwatch.test";
    let tls = TlsFixtures::for_host(HOST);
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .start();
    let dns = DnsServer::builder().a(HOST, Ipv4Addr::LOCALHOST).start();
    let name = format!("{HOST}:{}", registry.port());
    for detail in [false, true] {
        let mut args = vec![
            "--interval",
            "1s",
            "--kubernetes",
            "off",
            "--registry",
            &name,
        ];
        if detail {
            args.push("--metrics-detail");
        }
        let agent = Agent::start(
            &[
                "--resolv-conf",
                dns.resolv_conf_str(),
                "--ca-file",
                tls.ca.cert_path_str(),
                "--timeout",
                "2s",
            ],
            &args,
        );
        let up = [("registry", name.as_str())];
        let (metrics, _) = agent.wait_metrics("the registry up", Duration::from_secs(30), |m| {
            sample(m, "pullwatch_registry_up", &up) == Some(1.0)
        });
        let series = series_of(&metrics, &name);
        let count = |metric: &str| series.iter().filter(|n| *n == metric).count();
        if detail {
            // Every check of the chain, its duration, the addresses per family, the status.
            assert_eq!(count("pullwatch_check_success"), 4, "{series:?}");
            assert_eq!(samples(&metrics, "pullwatch_check_success", &up), [1.0; 4]);
            assert_eq!(count("pullwatch_check_duration_seconds"), 4);
            assert_eq!(count("pullwatch_dns_addresses"), 2);
            assert_eq!(count("pullwatch_tcp_addresses_reachable"), 2);
            assert_eq!(count("pullwatch_http_status_code"), 1);
            assert_eq!(series.len(), 17, "{series:?}");
            continue;
        }
        // No manifest check without a canary on the node, so no credentials series: 4 of the 5.
        assert_eq!(
            series,
            [
                "pullwatch_endpoint_up",
                "pullwatch_registry_up",
                "pullwatch_tls_cert_not_after_timestamp_seconds",
                "pullwatch_tls_info",
            ],
            "{metrics}"
        );

        let client = Client::http(agent.addr());
        let plain = client.get("/metrics").expect("plain scrape");
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.header("vary"), Some("accept-encoding"));
        let packed = client
            .request("GET", "/metrics", &[("Accept-Encoding", "gzip")], &[])
            .expect("gzip scrape");
        assert_eq!(packed.status, 200);
        assert_eq!(packed.header("content-encoding"), Some("gzip"));
        assert_eq!(packed.header("vary"), Some("accept-encoding"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(&packed.body[..])
            .read_to_string(&mut text)
            .expect("a gzip body");
        assert_eq!(label_sets(&text), label_sets(&plain.text()));
        eprintln!(
            "/metrics: {} bytes plain, {} gzip",
            plain.body.len(),
            packed.body.len()
        );
    }
}
