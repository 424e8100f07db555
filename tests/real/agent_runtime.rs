//! The agent against a real containerd: the runtime metrics, a registry discovered from the images
//! the node holds, and the runtime stopped (`runtime_up` 0, `/healthz` still 200) and started again.

use std::time::{Duration, Instant};

use testkit::agent::{Agent, sample, samples};
use testkit::containerd::Containerd;
use testkit::dns::DnsServer;
use testkit::registry::Registry;

const SETTLE: Duration = Duration::from_secs(30);

fn runtime_up(metrics: &str) -> Option<f64> {
    sample(metrics, "pullwatch_runtime_up", &[])
}

#[test]
fn runtime_metrics_follow_containerd_and_its_images_are_discovered() {
    let registry = Registry::start();
    let pushed = registry.push_image("team/app", "1.0");
    let registry_name = format!("127.0.0.1:{}", registry.port());
    let mut containerd = Containerd::start();
    // An image on the node, pulled into the CRI plugin's namespace, by tag and by digest, as
    // the kubelet's pull leaves it (the digest is the canary).
    for reference in [
        format!("{registry_name}/team/app:1.0"),
        format!("{registry_name}/team/app@{}", pushed.digest),
    ] {
        containerd.pull_plain_http(&reference, None);
    }
    let dns = DnsServer::builder().start();
    let requests_before = registry.access_log().len();
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--timeout",
            "2s",
            "--runtime-endpoint",
            &containerd.endpoint(),
            "--insecure-registry",
            &registry_name,
        ],
        // Detail: the auth and manifest checks' own series, which a healthy registry has only so.
        &["--interval", "1s", "--metrics-detail"],
    );

    let (metrics, _) = agent.wait_metrics("the runtime's state", SETTLE, |m| {
        runtime_up(m) == Some(1.0) && sample(m, "pullwatch_images", &[]).is_some()
    });
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_runtime_info",
            &[("runtime_name", "containerd")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_runtime_info",
            &[("runtime_api_version", "v1")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_runtime_condition",
            &[("condition", "RuntimeReady")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "pullwatch_images", &[]) >= Some(1.0),
        "{metrics}"
    );
    assert!(
        !samples(&metrics, "pullwatch_image_fs_used_bytes", &[]).is_empty(),
        "{metrics}"
    );
    // Nobody named the registry: the node's image did, and it is reachable.
    agent.wait_metrics("the discovered registry up", SETTLE, |m| {
        sample(m, "pullwatch_registry_up", &[("registry", &registry_name)]) == Some(1.0)
    });
    // Its canary is the image the node holds, by digest: auth and manifest checked with a HEAD,
    // and the runtime's own pull of it, which downloads nothing.
    let check = |m: &str, check: &str| {
        sample(
            m,
            "pullwatch_check_success",
            &[("registry", &registry_name), ("check", check)],
        )
    };
    let (metrics, _) = agent.wait_metrics("the manifest and runtime checks", SETTLE, |m| {
        check(m, "manifest").is_some()
            && sample(
                m,
                "pullwatch_runtime_check_success",
                &[("registry", &registry_name)],
            )
            .is_some()
    });
    assert_eq!(check(&metrics, "auth"), Some(1.0), "{metrics}");
    assert_eq!(check(&metrics, "manifest"), Some(1.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_runtime_check_success",
            &[("registry", &registry_name)]
        ),
        Some(1.0),
        "{metrics}\ncontainerd log:\n{}",
        containerd.log()
    );
    let since_agent = &registry.access_log()[requests_before..];
    let manifest_heads = since_agent
        .iter()
        .filter(|r| r.method == "HEAD" && r.path.contains("/manifests/sha256:"))
        .count();
    assert!(
        manifest_heads >= 1,
        "no HEAD of the canary: {since_agent:#?}"
    );
    let gets: Vec<_> = since_agent
        .iter()
        .filter(|r| {
            r.method == "GET" && (r.path.contains("/manifests/") || r.path.contains("/blobs/"))
        })
        .collect();
    assert!(
        gets.is_empty(),
        "manifests or blobs were downloaded: {gets:#?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&agent.get("/api/v1/status").1).expect("status JSON");
    assert!(
        status["registries"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["registry"] == registry_name.as_str())),
        "{status}"
    );

    // The runtime goes away: a metric, not a crash, and liveness does not care.
    containerd.kill();
    let killed = Instant::now();
    let (metrics, took) = agent.wait_metrics("runtime_up 0", Duration::from_secs(10), |m| {
        runtime_up(m) == Some(0.0)
    });
    eprintln!("runtime_up went to 0 {took:?} after containerd was killed");
    assert!(
        sample(&metrics, "pullwatch_images", &[]).is_none(),
        "no image count from a runtime that is down:\n{metrics}"
    );
    while killed.elapsed() < Duration::from_secs(3) {
        let (status, body) = agent.get("/healthz");
        assert_eq!(status, 200, "/healthz with the runtime down: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    containerd.restart();
    let (_, took) = agent.wait_metrics("runtime_up back to 1", SETTLE, |m| {
        runtime_up(m) == Some(1.0) && sample(m, "pullwatch_images", &[]).is_some()
    });
    eprintln!("runtime_up back to 1 {took:?} after containerd restarted");
    assert_eq!(agent.get("/healthz").0, 200);
}
