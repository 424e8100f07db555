//! What the agent exports about a registry that answers, but badly: the `/v2/` status is
//! kept even when the http check fails (a 503 is the evidence), next to the failure reason.

use std::net::Ipv4Addr;
use std::time::Duration;

use testkit::agent::{Agent, sample};
use testkit::dns::DnsServer;
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
