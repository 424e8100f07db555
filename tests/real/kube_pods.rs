//! The agent watching its node's pods through a fake API server: pull failures (real containerd
//! messages from the corpus) become metrics per reason, each failed attempt is counted once across
//! back-offs, dropped watches and 410 relists, the Event joins the kubelet's words with this node's
//! own DNS evidence, series go on recovery and deletion, and the watch is never cluster-wide.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{Agent, NODE, sample, samples};
use testkit::dns::DnsServer;
use testkit::image::{Image, Platform};
use testkit::kube_api::{KubeApi, back_off_message, kubelet_message, pod};
use testkit::registry::Registry;

/// Start-up, the first list, the first diagnosis (DNS answers at once here).
const SETTLE: Duration = Duration::from_secs(30);
/// The watcher's backoff after an error starts below a second; relists and re-watches are quick.
const RECOVER: Duration = Duration::from_secs(20);

const WATCH_UP: &str = "pullwatch_kubernetes_watch_up";
const FAILURES: &str = "pullwatch_image_pull_failures_total";
const WAITING: &str = "pullwatch_containers_waiting_on_pull";
const FAILING: &str = "pullwatch_container_pull_failing";
const DROPPED: &str = "pullwatch_series_dropped_total";

pub(crate) fn start_agent(api: &KubeApi, dns: &DnsServer, agent: &[&str]) -> Agent {
    let mut flags = vec!["--kubernetes", "on", "--interval", "60s"];
    flags.extend_from_slice(agent);
    Agent::start_with_env(
        &["--resolv-conf", dns.resolv_conf_str(), "--timeout", "2s"],
        &flags,
        &[("KUBECONFIG", api.kubeconfig_str())],
    )
}

/// Pod `name` in `shop` on this node, its container `app` failing to pull `image` with the
/// kubelet's `message` (ErrImagePull).
pub(crate) fn failing_pod(name: &str, image: &str, message: &str) -> Value {
    pod("shop", name, &format!("uid-{name}"), NODE)
        .waiting("app", image, "ErrImagePull", message)
        .build()
}

/// The Events posted about pod `name`.
fn events_for(api: &KubeApi, name: &str) -> Vec<Value> {
    api.events()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .collect()
}

/// `host:port` of a corpus image (all of them name their registry).
fn registry_of(image: &str) -> String {
    image.split('/').next().expect("a registry").to_string()
}

fn status_failures(agent: &Agent) -> Vec<Value> {
    let (code, body) = agent.get("/api/v1/status");
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("status is JSON");
    status["failures"].as_array().cloned().unwrap_or_default()
}

#[test]
fn pull_failures_are_counted_explained_and_cleared() {
    let dns = DnsServer::builder()
        .nxdomain("missing.test")
        .a("other.test", Ipv4Addr::LOCALHOST)
        .start();
    let api = KubeApi::start(NODE);
    let (web_image, nxdomain) = kubelet_message("dns_nxdomain");
    let (api_image, not_found) = kubelet_message("unknown_tag");
    let init_image = kubelet_message("connection_refused").0;
    assert_eq!(web_image, "missing.test/app:1.0");
    // The corpus was recorded against registries on random local ports.
    let api_registry = registry_of(&api_image);
    let web = |reason: &str, message: &str| {
        pod("shop", "web", "uid-web", NODE)
            .waiting("app", &web_image, reason, message)
            .build()
    };
    api.apply_pod(web("ErrImagePull", &nxdomain));
    api.apply_pod(
        pod("shop", "api", "uid-api", NODE)
            .waiting("app", &api_image, "ErrImagePull", &not_found)
            .build(),
    );
    api.apply_pod(
        pod("jobs", "migrate", "uid-migrate", NODE)
            .init_waiting(
                "setup",
                &init_image,
                "ImagePullBackOff",
                &back_off_message(&init_image),
            )
            .waiting("app", "other.test/app:1", "PodInitializing", "")
            .build(),
    );
    api.apply_pod(
        pod("shop", "ok", "uid-ok", NODE)
            .running("app", "other.test/app:1")
            .build(),
    );
    // Another node's failing pod: the server never hands it out, and it must not show.
    api.apply_pod(
        pod("shop", "elsewhere", "uid-elsewhere", "other-node")
            .waiting("app", &web_image, "ErrImagePull", &nxdomain)
            .build(),
    );

    let agent = start_agent(&api, &dns, &[]);
    let web_failing = [
        ("namespace", "shop"),
        ("pod", "web"),
        ("container", "app"),
        ("registry", "missing.test"),
        ("reason", "dns_nxdomain"),
    ];
    // Seen first in back-off, the init container's message has no cause: its series take this
    // node's own diagnosis of the image (nothing listens there: tcp_refused), not `unknown`.
    let setup_refused = [
        ("namespace", "jobs"),
        ("container", "setup"),
        ("reason", "tcp_refused"),
    ];
    let (text, _) = agent.wait_metrics("the failing containers", SETTLE, |m| {
        sample(m, WATCH_UP, &[]) == Some(1.0)
            && samples(m, FAILING, &[]).len() == 3
            && sample(m, FAILING, &web_failing) == Some(1.0)
            && sample(m, FAILING, &setup_refused) == Some(1.0)
    });
    assert_eq!(
        sample(
            &text,
            FAILING,
            &[
                ("pod", "api"),
                ("registry", &api_registry),
                ("reason", "manifest_unknown")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        samples(&text, FAILING, &[("reason", "unknown")]).is_empty(),
        "{text}"
    );
    assert!(!text.contains("elsewhere"), "{text}");
    let nx = [("registry", "missing.test"), ("reason", "dns_nxdomain")];
    assert_eq!(sample(&text, WAITING, &nx), Some(1.0), "{text}");
    assert_eq!(sample(&text, FAILURES, &nx), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            FAILURES,
            &[("registry", &api_registry), ("reason", "manifest_unknown")]
        ),
        Some(1.0),
        "{text}"
    );
    // A back-off is not an attempt.
    assert!(
        samples(&text, FAILURES, &[("registry", &registry_of(&init_image))]).is_empty(),
        "{text}"
    );
    assert!(text.contains(&format!("node=\"{NODE}\"")), "{text}");

    // The Event: this node's own DNS check joined with the kubelet's words.
    api.wait("web's diagnosis Event", SETTLE, |api| {
        !events_for(api, "web").is_empty()
    });
    let event = &events_for(&api, "web")[0];
    assert_eq!(event["reason"], "PullDiagnosis", "{event}");
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reportingController"], "pullwatch", "{event}");
    assert_eq!(event["reportingInstance"], NODE, "{event}");
    assert_eq!(event["regarding"]["kind"], "Pod", "{event}");
    assert_eq!(event["regarding"]["uid"], "uid-web", "{event}");
    assert_eq!(
        event["regarding"]["fieldPath"], "spec.containers{app}",
        "{event}"
    );
    assert_eq!(event["metadata"]["namespace"], "shop", "{event}");
    let note = event["note"].as_str().expect("a note");
    assert!(note.len() <= 1024, "{} bytes: {note}", note.len());
    for want in [
        "dns_nxdomain: container app cannot pull missing.test/app:1.0",
        "Kubelet: ErrImagePull: rpc error",
        "no such host",
        &format!(
            "Checked from node {NODE}: dns_nxdomain: https://missing.test (dns): missing.test: A NXDOMAIN"
        ),
        "Fix: check the spelling of missing.test",
    ] {
        assert!(note.contains(want), "{want:?} not in the note: {note}");
    }
    assert!(
        dns.queries("missing.test") > 0,
        "the node's own DNS check ran"
    );

    // The status lists the failures with their diagnosis.
    let failures = status_failures(&agent);
    let web_status = failures
        .iter()
        .find(|f| f["pod"] == "web")
        .unwrap_or_else(|| panic!("web not in {failures:?}"));
    assert_eq!(web_status["reason"], "dns_nxdomain");
    assert_eq!(web_status["waiting_reason"], "ErrImagePull");
    assert_eq!(web_status["attempts"], 1);
    assert_eq!(
        web_status["diagnosis"]["reason"], "dns_nxdomain",
        "{web_status}"
    );
    assert_eq!(
        web_status["diagnosis"]["endpoints"][0]["checks"][0]["check"],
        "dns"
    );

    // Back-off, a new attempt, back-off: one more failed attempt, the cause kept throughout.
    api.apply_pod(web("ImagePullBackOff", &back_off_message(&web_image)));
    api.apply_pod(web("ErrImagePull", &nxdomain));
    api.apply_pod(web("ImagePullBackOff", &back_off_message(&web_image)));
    agent.wait_metrics("the second attempt", RECOVER, |m| {
        sample(m, FAILURES, &nx) == Some(2.0) && sample(m, FAILING, &web_failing) == Some(1.0)
    });

    // An attempt while the watch connection is down is replayed once on the resumed watch.
    api.drop_watches();
    api.apply_pod(web("ErrImagePull", &nxdomain));
    agent.wait_metrics("the attempt made during the drop", RECOVER, |m| {
        sample(m, FAILURES, &nx) == Some(3.0)
    });

    // 410 Gone: the agent relists; the same statuses count nothing again.
    let lists = api.lists();
    api.expire();
    api.wait("a relist after 410 Gone", RECOVER, |api| {
        api.lists() > lists
    });
    api.wait("the watch resumed", RECOVER, |api| api.open_watches() > 0);
    api.apply_pod(web("ImagePullBackOff", &back_off_message(&web_image)));
    let (text, _) = agent.wait_metrics("the watch after the relist", RECOVER, |m| {
        sample(m, WATCH_UP, &[]) == Some(1.0)
            && status_failures(&agent)
                .iter()
                .any(|f| f["pod"] == "web" && f["waiting_reason"] == "ImagePullBackOff")
    });
    assert_eq!(sample(&text, FAILURES, &nx), Some(3.0), "{text}");
    assert_eq!(sample(&text, WAITING, &nx), Some(1.0), "{text}");

    // The Event was posted once, whatever the attempts, drops and relists.
    assert_eq!(events_for(&api, "web").len(), 1, "{:#?}", api.events());
    assert!(api.patches().is_empty(), "{:?}", api.patches());

    // The image is corrected to one whose tag does not exist: a new reason, a second Event,
    // from a diagnosis of the new image.
    api.apply_pod(
        pod("shop", "web", "uid-web", NODE)
            .waiting("app", &api_image, "ErrImagePull", &not_found)
            .build(),
    );
    api.wait("web's second Event", RECOVER, |api| {
        events_for(api, "web").len() == 2
    });
    let note = events_for(&api, "web")[1]["note"]
        .as_str()
        .expect("a note")
        .to_string();
    assert!(
        note.starts_with(&format!(
            "manifest_unknown: container app cannot pull {api_image}. Kubelet: ErrImagePull:"
        )),
        "{note}"
    );
    let (text, _) = agent.wait_metrics("web's new reason", RECOVER, |m| {
        sample(
            m,
            FAILING,
            &[("pod", "web"), ("reason", "manifest_unknown")],
        ) == Some(1.0)
    });
    assert!(
        samples(&text, WAITING, &[("registry", "missing.test")]).is_empty(),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            FAILURES,
            &[("registry", &api_registry), ("reason", "manifest_unknown")]
        ),
        Some(2.0),
        "{text}"
    );

    // Recovery: the image got pulled, the container runs; its series go, the counters stay.
    api.apply_pod(
        pod("shop", "web", "uid-web", NODE)
            .running("app", &api_image)
            .build(),
    );
    let (text, _) = agent.wait_metrics("web's series gone", RECOVER, |m| {
        samples(m, FAILING, &[("pod", "web")]).is_empty()
    });
    assert!(
        samples(&text, WAITING, &[("registry", "missing.test")]).is_empty(),
        "{text}"
    );
    assert_eq!(sample(&text, FAILURES, &nx), Some(3.0), "{text}");

    // Deletion: the pod's series go.
    api.delete_pod("shop", "api");
    agent.wait_metrics("api's series gone", RECOVER, |m| {
        samples(m, FAILING, &[("pod", "api")]).is_empty()
            && samples(m, WAITING, &[("registry", &api_registry)]).is_empty()
    });
    let failures = status_failures(&agent);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["pod"], "migrate");

    assert_eq!(api.violations(), Vec::<String>::new(), "never cluster-wide");
    // Lists are served from the API server's cache (the first any version, a relist no older
    // than the last seen, never a quorum read here); watches ask for bookmarks.
    let mut lists = 0;
    for seen in api.requests() {
        if seen.method != "GET" {
            continue;
        }
        if seen.target.contains("watch=true") {
            assert!(seen.target.contains("allowWatchBookmarks=true"), "{seen:?}");
        } else if lists == 0 {
            lists += 1;
            assert!(seen.target.ends_with("&resourceVersion=0"), "{seen:?}");
        } else {
            lists += 1;
            assert!(
                seen.target.contains("&resourceVersionMatch=NotOlderThan")
                    && !seen.target.contains("resourceVersion=0&"),
                "{seen:?}"
            );
        }
    }
    assert!(
        lists >= 2,
        "the 410 and the dropped watch bring relists: {lists}"
    );
    let text = agent.metrics();
    assert_eq!(
        sample(&text, DROPPED, &[("metric", FAILING)]),
        Some(0.0),
        "nothing refused: {text}"
    );
}

#[test]
fn events_off_series_capped_and_the_watch_goes_down_and_up() {
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start(NODE);
    let (image, nxdomain) = kubelet_message("dns_nxdomain");
    for name in ["a", "b", "c"] {
        api.apply_pod(
            pod("shop", name, &format!("uid-{name}"), NODE)
                .waiting("app", &image, "ErrImagePull", &nxdomain)
                .build(),
        );
    }
    let agent = start_agent(
        &api,
        &dns,
        &["--post-events=false", "--max-failing-series", "3"],
    );
    // Budget 3: the per-registry gauge takes 1, two container series the rest; the third is
    // refused and counted once. The counter has slots of its own.
    let nx = [("registry", "missing.test"), ("reason", "dns_nxdomain")];
    // A scrape is not one snapshot across metric families: wait for the whole settled state.
    let (text, _) = agent.wait_metrics("the capped series", SETTLE, |m| {
        sample(m, DROPPED, &[("metric", FAILING)]) == Some(1.0)
            && sample(m, WAITING, &nx) == Some(3.0)
    });
    assert_eq!(samples(&text, FAILING, &[]).len(), 2, "{text}");
    assert_eq!(sample(&text, WAITING, &nx), Some(3.0), "{text}");
    assert_eq!(sample(&text, FAILURES, &nx), Some(3.0), "{text}");

    // The diagnosis ran (status shows it) but no Event was posted.
    testkit::wait_for("the diagnosis in the status", SETTLE, || {
        status_failures(&agent)
            .iter()
            .all(|f| f["diagnosis"]["reason"] == "dns_nxdomain")
            .then_some(())
    });
    assert!(api.events().is_empty(), "{:#?}", api.events());

    // The API server fails: the watch is down; it comes back by itself.
    api.set_failing(true);
    agent.wait_metrics("the watch down", RECOVER, |m| {
        sample(m, WATCH_UP, &[]) == Some(0.0)
    });
    // Meanwhile the last known failures stay, and the agent is alive: liveness never depends
    // on the API server.
    assert_eq!(sample(&agent.metrics(), WAITING, &nx), Some(3.0));
    let (code, body) = agent.get("/healthz");
    assert_eq!(code, 200, "{body}");
    api.set_failing(false);
    agent.wait_metrics("the watch up again", RECOVER * 2, |m| {
        sample(m, WATCH_UP, &[]) == Some(1.0)
    });
    // Nothing counted twice across the outage.
    assert_eq!(sample(&agent.metrics(), FAILURES, &nx), Some(3.0));
    assert_eq!(api.violations(), Vec::<String>::new(), "never cluster-wide");
}

#[test]
fn a_failing_pod_image_is_checked_with_a_manifest_head_only() {
    // A multi-platform index: `diagnose` would GET it to look for the node's platform; the agent
    // must not (a GET spends Docker Hub pull quota), whatever the pod is waiting for.
    let registry = Registry::start();
    let host = Platform::host().to_string();
    registry.push("team/app", "1.0", &Image::index(&[&host, "linux/s390x"]));
    let registry_name = format!("127.0.0.1:{}", registry.port());
    let image = format!("{registry_name}/team/app:1.0");
    let dns = DnsServer::builder().start();
    let api = KubeApi::start(NODE);
    api.apply_pod(
        pod("shop", "web", "uid-web", NODE)
            .waiting("app", &image, "ImagePullBackOff", &back_off_message(&image))
            .build(),
    );
    let before = registry.access_log().len();
    let agent = Agent::start_with_env(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--timeout",
            "2s",
            "--insecure-registry",
            &registry_name,
        ],
        &["--kubernetes", "on", "--interval", "60s"],
        &[("KUBECONFIG", api.kubeconfig_str())],
    );
    let diagnosis = testkit::wait_for("the pod image's diagnosis", SETTLE, || {
        status_failures(&agent)
            .first()
            .map(|f| f["diagnosis"].clone())
            .filter(|d| d.is_object())
    });
    assert_eq!(diagnosis["pullable"], true, "{diagnosis}");
    assert_eq!(diagnosis["image"], image.as_str(), "{diagnosis}");
    let manifest = diagnosis["endpoints"][0]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == "manifest"))
        .cloned()
        .unwrap_or_default();
    assert!(
        manifest["detail"]
            .as_str()
            .is_some_and(|d| d.contains("HEAD answered 200 OK")),
        "{diagnosis}"
    );
    let seen = &registry.access_log()[before..];
    assert!(
        seen.iter()
            .any(|r| r.method == "HEAD" && r.path == "/v2/team/app/manifests/1.0"),
        "the exact image was checked: {seen:#?}"
    );
    let downloads: Vec<_> = seen
        .iter()
        .filter(|r| {
            r.method == "GET" && (r.path.contains("/manifests/") || r.path.contains("/blobs/"))
        })
        .collect();
    assert!(downloads.is_empty(), "HEAD only: {downloads:#?}");
}

#[test]
fn kubernetes_on_without_credentials_is_bad_config_and_auto_outside_a_cluster_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pw.sock");
    let missing = dir.path().join("no-kubeconfig");
    let agent_args = |mode: &str| {
        vec![
            "agent".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--api-socket".into(),
            socket.display().to_string(),
            "--node-name".into(),
            NODE.into(),
            "--kubernetes".into(),
            mode.into(),
        ]
    };
    let out = testkit::cli::Pullwatch::new()
        .env("KUBECONFIG", missing.display().to_string())
        .env("KUBERNETES_SERVICE_HOST", "")
        .args(agent_args("on"))
        .timeout(Duration::from_secs(30))
        .run();
    assert_eq!(out.exit_code(), 64, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("--kubernetes"), "{}", out.stderr);
    assert!(
        !socket.exists(),
        "a failed start leaves no API socket behind"
    );

    // auto outside a cluster: the agent runs, without a pod watch.
    let dns = DnsServer::builder().start();
    let agent = Agent::start_with_env(
        &["--resolv-conf", dns.resolv_conf_str()],
        &["--kubernetes", "auto"],
        &[
            ("KUBECONFIG", missing.to_str().expect("UTF-8 tempdir")),
            ("KUBERNETES_SERVICE_HOST", ""),
        ],
    );
    let text = agent.metrics();
    assert!(samples(&text, WATCH_UP, &[]).is_empty(), "{text}");
    assert!(!agent.stderr().contains("watching this node's pods"));
}

/// A pod first seen in back-off says no cause; once this node diagnoses the image, its failure
/// series carry the node's finding (`dns_servfail`), not `unknown`.
#[test]
fn a_back_off_without_a_cause_takes_the_nodes_diagnosis() {
    let dns = DnsServer::builder().servfail("broken.test").start();
    let api = KubeApi::start(NODE);
    let image = "broken.test/app:1.0";
    api.apply_pod(
        pod("shop", "late", "uid-late", NODE)
            .waiting("app", image, "ImagePullBackOff", &back_off_message(image))
            .build(),
    );
    let agent = start_agent(&api, &dns, &[]);
    let failing = |reason: &'static str| {
        move |m: &str| {
            sample(
                m,
                FAILING,
                &[
                    ("pod", "late"),
                    ("registry", "broken.test"),
                    ("reason", reason),
                ],
            ) == Some(1.0)
        }
    };
    let (metrics, _) = agent.wait_metrics(
        "the node's cause on the failing series",
        SETTLE,
        failing("dns_servfail"),
    );
    assert!(!failing("unknown")(&metrics), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            WAITING,
            &[("registry", "broken.test"), ("reason", "dns_servfail")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn a_slow_api_server_gets_at_most_four_event_posts_at_once() {
    const PODS: usize = 12;
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start(NODE);
    // Each Event POST waits a second for its answer: without a cap, all twelve would be open at
    // once (each an API connection kept in kube's pool).
    api.set_event_delay(Duration::from_secs(1));
    let (image, nxdomain) = kubelet_message("dns_nxdomain");
    for i in 0..PODS {
        api.apply_pod(
            pod("shop", &format!("web-{i}"), &format!("uid-web-{i}"), NODE)
                .waiting("app", &image, "ErrImagePull", &nxdomain)
                .build(),
        );
    }
    let _agent = start_agent(&api, &dns, &["--max-failing-series", "100"]);
    api.wait("an Event for every pod", SETTLE, |api| {
        api.events().len() == PODS
    });
    let peak = api.event_posts_peak();
    assert!(
        (2..=4).contains(&peak),
        "{peak} Event POSTs were in flight at once (at most 4, and more than one, or the \
         server's delay never overlapped them)"
    );
    assert_eq!(api.violations(), Vec::<String>::new());
}

/// The API server as in a cluster: TLS with its own CA, a bearer token from a file that rotates
/// in place. The agent's own client trusts the kubeconfig's CA, sends the token, reads the file
/// again for a later request, and never shows the token; without the CA the watch is down, named.
#[test]
fn the_watch_over_tls_sends_the_token_file_and_follows_its_rotation() {
    const FIRST: &str = "token-first-3b9d";
    const SECOND: &str = "token-second-77ae";
    let dns = DnsServer::builder().nxdomain("missing.test").start();
    let api = KubeApi::start_tls(NODE, FIRST);
    let (image, nxdomain) = kubelet_message("dns_nxdomain");
    let failing = |name: &str| failing_pod(name, &image, &nxdomain);
    api.apply_pod(failing("a"));
    let agent = start_agent(&api, &dns, &[]);
    agent.wait_metrics("the watch up over TLS", SETTLE, |m| {
        sample(m, WATCH_UP, &[]) == Some(1.0)
    });
    testkit::wait_for("the Event on pod a", SETTLE, || {
        (!events_for(&api, "a").is_empty()).then_some(())
    });

    // The token rotates; the open watch goes on, and the next request (pod b's Event) must
    // carry the new one: the server now refuses the old.
    api.rotate_token(SECOND);
    api.apply_pod(failing("b"));
    testkit::wait_for("the Event on pod b, with the new token", SETTLE, || {
        (!events_for(&api, "b").is_empty()).then_some(())
    });
    let log = agent.stderr();
    assert!(
        !log.contains(FIRST) && !log.contains(SECOND),
        "a token in the log:\n{log}"
    );
    assert_eq!(api.violations(), Vec::<String>::new());

    // The same server, but a kubeconfig without its CA: the system's roots do not know it.
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let untrusting = api.kubeconfig().with_file_name("untrusting");
    let without_ca: String = kubeconfig
        .lines()
        .filter(|line| !line.contains("certificate-authority"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&untrusting, without_ca).unwrap();
    let stranger = Agent::start_with_env(
        &["--resolv-conf", dns.resolv_conf_str(), "--timeout", "2s"],
        &["--kubernetes", "on", "--interval", "60s"],
        &[("KUBECONFIG", untrusting.to_str().unwrap())],
    );
    testkit::wait_for("the untrusted server named in the log", SETTLE, || {
        let log = stranger.stderr();
        (log.contains("list:") && log.to_lowercase().contains("certificate")).then_some(())
    });
    assert_eq!(sample(&stranger.metrics(), WATCH_UP, &[]), Some(0.0));
}
