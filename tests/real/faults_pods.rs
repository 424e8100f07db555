//! The pod watch against a misbehaving API server and a node with thousands of failing
//! containers: an event that does not decode drops the watch and relists at once (never resuming
//! from what the bad stream said), and a list of thousands of failing pods costs linear work and
//! leaves nothing behind once they are gone.

use std::time::Duration;

use testkit::agent::{NODE, sample};
use testkit::dns::DnsServer;
use testkit::kube_api::{KubeApi, kubelet_message, pod};

use crate::kube_pods::{failing_pod, start_agent};

const FAILING: &str = "pullwatch_container_pull_failing";
const WAITING: &str = "pullwatch_containers_waiting_on_pull";

fn failing(pod: &str) -> [(&str, &str); 3] {
    [("namespace", "shop"), ("pod", pod), ("container", "app")]
}

/// The stream sends a line that does not decode, carrying a resourceVersion, then goes silent
/// with its connection open. The agent drops it and lists again within seconds (the watcher used
/// to keep waiting on it for minutes), sees what changed meanwhile, and never watches from the
/// bad line's resourceVersion.
#[test]
fn a_malformed_watch_event_drops_the_watch_and_relists() {
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start(NODE);
    let (image, nxdomain) = kubelet_message("dns_nxdomain");
    api.apply_pod(
        pod("shop", "web", "uid-web", NODE)
            .waiting("app", &image, "ErrImagePull", &nxdomain)
            .build(),
    );
    let agent = start_agent(&api, &dns, &[]);
    agent.wait_metrics("web failing", Duration::from_secs(30), |m| {
        sample(m, FAILING, &failing("web")) == Some(1.0)
    });
    api.wait("an open watch", Duration::from_secs(20), |a| {
        a.open_watches() > 0
    });
    let lists = api.lists();
    api.send_malformed(
        r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":7,"namespace":"shop","resourceVersion":"999999"}}}"#,
    );
    // A change only a new list or watch can bring.
    api.apply_pod(
        pod("shop", "api", "uid-api", NODE)
            .waiting("app", &image, "ErrImagePull", &nxdomain)
            .build(),
    );
    api.wait(
        "a relist after the bad event",
        Duration::from_secs(10),
        |a| a.lists() > lists,
    );
    agent.wait_metrics("api failing", Duration::from_secs(10), |m| {
        sample(m, FAILING, &failing("api")) == Some(1.0)
    });
    let versions = api.watch_versions();
    assert!(
        !versions.iter().any(|v| v == "999999"),
        "a watch resumed from the malformed event's resourceVersion: {versions:?}"
    );
    // The relist reads no further back than what the agent had seen (client-go's reflector),
    // and not from the malformed event.
    let relist = api
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/pods") && !r.target.contains("watch=true"))
        .nth(lists)
        .expect("the relist");
    assert!(
        relist.target.contains("resourceVersionMatch=NotOlderThan")
            && !relist.target.contains("999999"),
        "{}",
        relist.target
    );
    assert!(api.violations().is_empty(), "{:?}", api.violations());
}

/// 2,000 failing pods listed at once: the agent takes them in with CPU time well under what the
/// quadratic handling took (17.8 s for 2,000), and once they are deleted no series and no status
/// entry is left.
/// An API server (or a proxy before it) that accepts every watch and ends it at once, without a
/// line: the agent backs off and lists again, rather than watching again in a tight loop.
#[test]
fn a_watch_that_ends_at_once_is_backed_off_not_spun() {
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start(NODE);
    api.end_watches_at_once(true);
    let agent = start_agent(&api, &dns, &[]);
    api.wait("the first watch", Duration::from_secs(20), |api| {
        api.watches() >= 1
    });
    std::thread::sleep(Duration::from_secs(6));
    // Backoff from 1 s, doubling: a handful of lists and watches in 6 s, not thousands.
    let (watches, lists) = (api.watches(), api.lists());
    assert!(watches <= 8, "{watches} watches in 6 s");
    assert!(lists >= 2, "each failure lists afresh: {lists} lists");
    let log = agent.stderr();
    assert!(log.contains("ended within 1s of starting"), "{log}");
    // Once watches are served again, the watch stays up.
    api.end_watches_at_once(false);
    api.wait("a watch open", Duration::from_secs(40), |api| {
        api.open_watches() == 1
    });
    assert_eq!(
        sample(&agent.metrics(), "pullwatch_kubernetes_watch_up", &[]),
        Some(1.0)
    );
}

/// After a 410 the agent relists no older than what it saw; when that list is refused as
/// expired too, the next is a quorum read (no resourceVersion), as client-go's reflector does,
/// and what changed meanwhile is seen.
#[test]
fn an_expired_relist_falls_back_to_a_quorum_read() {
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start(NODE);
    let (image, nxdomain) = kubelet_message("dns_nxdomain");
    let failing_pod = |name: &str| failing_pod(name, &image, &nxdomain);
    api.apply_pod(failing_pod("web"));
    let agent = start_agent(&api, &dns, &[]);
    api.wait("an open watch", Duration::from_secs(20), |a| {
        a.open_watches() > 0
    });
    let before = api.requests().len();
    api.expire_versioned_lists(true);
    api.expire();
    api.apply_pod(failing_pod("api"));
    agent.wait_metrics("api failing", Duration::from_secs(20), |m| {
        sample(m, FAILING, &failing("api")) == Some(1.0)
    });
    let lists: Vec<String> = api.requests()[before..]
        .iter()
        .filter(|r| r.target.contains("/pods") && !r.target.contains("watch=true"))
        .map(|r| r.target.clone())
        .collect();
    assert!(
        lists.len() >= 2
            && lists[0].contains("resourceVersionMatch=NotOlderThan")
            && !lists[1].contains("resourceVersion"),
        "a no-older-than relist, refused, then a quorum read: {lists:#?}"
    );
    assert!(api.violations().is_empty(), "{:?}", api.violations());
}

#[test]
fn thousands_of_failing_pods_cost_linear_work_and_leave_nothing() {
    const PODS: usize = 2_000;
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start(NODE);
    let (image, nxdomain) = kubelet_message("dns_nxdomain");
    for i in 0..PODS {
        api.apply_pod(
            pod("shop", &format!("p{i}"), &format!("uid-{i}"), NODE)
                .waiting("app", &image, "ErrImagePull", &nxdomain)
                .build(),
        );
    }
    // Without Events: this measures the pod list's handling, not 2,000 POSTs.
    let agent = start_agent(
        &api,
        &dns,
        &["--post-events=false", "--max-failing-series", "5000"],
    );
    agent.wait_metrics(
        "every pod counted as waiting",
        Duration::from_secs(60),
        |m| {
            sample(
                m,
                WAITING,
                &[("registry", "missing.test"), ("reason", "dns_nxdomain")],
            ) == Some(PODS as f64)
        },
    );
    // All of it, from the start (the list may be taken in before the agent answers /healthz);
    // generous for a debug build on a loaded machine.
    let spent = agent.cpu_time();
    assert!(
        spent < Duration::from_secs(10),
        "taking in {PODS} failing pods cost {spent:?} of CPU"
    );
    for i in 0..PODS {
        api.delete_pod("shop", &format!("p{i}"));
    }
    agent.wait_metrics("no failing series", Duration::from_secs(60), |m| {
        !m.lines()
            .any(|l| l.starts_with(FAILING) || l.starts_with(WAITING))
    });
    let (code, body) = agent.get("/api/v1/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(
        status["failures"].as_array().map(Vec::len),
        Some(0),
        "{body:.2000}"
    );
}
