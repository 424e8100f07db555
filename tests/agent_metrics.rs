//! What the agent exports about a registry that answers, but badly: the `/v2/` status is
//! kept even when the http check fails (a 503 is the evidence), next to the failure reason.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::agent::{Agent, sample};
use support::dns::DnsServer;
use support::scripted::{Response, ScriptedServer};

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
    let (metrics, _) = agent.wait_metrics("the /v2/ status", Duration::from_secs(20), |m| {
        sample(m, "pullwatch_http_status_code", &labels).is_some()
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
