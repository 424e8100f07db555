//! The CRI client against the real containerd: every call, reconnecting after a restart, pull
//! deadlines, and the runtime-path check that resolves remotely and downloads nothing.

use std::time::{Duration, Instant};

use pullwatch::backoff::Backoff;
use pullwatch::check::{self, CheckKind};
use pullwatch::reason::Reason;
use pullwatch::route::RuntimeKind;
use pullwatch::runtime::{RuntimeClient, RuntimeError};
use testkit::containerd::Containerd;
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_from_the_real_containerd() {
    let registry = Registry::start();
    let pause = format!("{}/pause:3.9", registry.addr());
    let pushed = registry.push_image("pause", "3.9");
    let ctrd = Containerd::builder().sandbox_image(&pause).start();
    let client = RuntimeClient::new(ctrd.socket(), CALL_TIMEOUT);

    let version = client.version().await.expect("Version");
    assert_eq!(version.kind(), RuntimeKind::Containerd);
    assert_eq!(version.runtime_api_version, "v1");
    assert!(version.runtime_version.starts_with("1.6"), "{version:?}");

    let status = client.status().await.expect("Status");
    assert_eq!(status.sandbox_image.as_deref(), Some(pause.as_str()));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.kind == "RuntimeReady")
        .expect("RuntimeReady condition");
    assert!(ready.status, "{status:?}");
    // No CNI config in the test: the runtime says so rather than pretending.
    let network = status
        .conditions
        .iter()
        .find(|c| c.kind == "NetworkReady")
        .expect("NetworkReady condition");
    assert!(!network.status && !network.message.is_empty(), "{status:?}");

    assert!(client.list_images().await.expect("ListImages").is_empty());
    let image_ref = client
        .pull_image(&pause, None, PULL_TIMEOUT)
        .await
        .expect("PullImage");
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let images = client.list_images().await.expect("ListImages");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].repo_tags, std::slice::from_ref(&pause));
    assert_eq!(
        images[0].repo_digests,
        [format!("{}/pause@{}", registry.addr(), pushed.digest)]
    );

    let filesystems = client.image_fs_info().await.expect("ImageFsInfo");
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");
    assert!(
        filesystems[0]
            .mountpoint
            .contains("io.containerd.snapshotter.v1.native"),
        "{filesystems:?}"
    );
    assert!(
        client
            .list_pod_sandboxes()
            .await
            .expect("ListPodSandbox")
            .is_empty()
    );
    assert!(
        client
            .list_containers()
            .await
            .expect("ListContainers")
            .is_empty()
    );
    let state = client.state().await;
    assert!(state.up && state.last_error.is_none(), "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_containerd_restarts() {
    let mut ctrd = Containerd::start();
    let client = RuntimeClient::new(ctrd.socket(), Duration::from_secs(2)).with_backoff(Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    });
    client.version().await.expect("Version before the restart");

    ctrd.kill();
    let down = client.version().await.expect_err("containerd is gone");
    assert!(
        matches!(down, RuntimeError::Unavailable { .. }),
        "a dead socket is reported, not a crash: {down}"
    );
    assert_eq!(down.reason(), Reason::RuntimeError);
    let state = client.state().await;
    assert!(!state.up && state.consecutive_failures >= 1, "{state:?}");

    ctrd.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let version = loop {
        match client.version().await {
            Ok(version) => break version,
            Err(error) if Instant::now() < deadline => {
                assert!(matches!(error, RuntimeError::Unavailable { .. }), "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no reconnect within 30 s: {error}"),
        }
    };
    assert_eq!(version.kind(), RuntimeKind::Containerd);
    // The same client keeps working.
    client
        .list_images()
        .await
        .expect("ListImages after reconnecting");
    let state = client.state().await;
    assert!(
        state.up && state.consecutive_failures == 0 && state.last_error.is_none(),
        "{state:?}"
    );
}

/// The runtime check pulls, by digest, the sandbox image the node holds: containerd resolves it at
/// the registry (a manifest HEAD) and fetches no blob and no manifest body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_check_resolves_remotely_and_downloads_nothing() {
    let registry = Registry::start();
    let pushed = registry.push_image("pause", "3.9");
    let pause = format!("{}/pause:3.9", registry.addr());
    let ctrd = Containerd::builder().sandbox_image(&pause).start();
    let client = RuntimeClient::new(ctrd.socket(), CALL_TIMEOUT);

    // Nothing on the node yet: no canary.
    assert_eq!(check::runtime::canary(&client, None).await.unwrap(), None);
    client
        .pull_image(&pause, None, PULL_TIMEOUT)
        .await
        .expect("the node pulls its sandbox image");
    let by_digest = format!("{}/pause@{}", registry.addr(), pushed.digest);
    assert_eq!(
        check::runtime::canary(&client, None).await.unwrap(),
        Some(by_digest.clone())
    );
    assert_eq!(
        check::runtime::canary(&client, Some(&registry.addr().to_string()))
            .await
            .unwrap(),
        Some(by_digest.clone())
    );
    assert_eq!(
        check::runtime::canary(&client, Some("quay.io"))
            .await
            .unwrap(),
        None
    );

    let before = registry.access_log().len();
    let (result, pulled) = check::run(
        CheckKind::Runtime,
        PULL_TIMEOUT,
        check::runtime::check(&client, &by_digest, None, PULL_TIMEOUT),
    )
    .await
    .split();
    assert!(result.ok, "{result:?}");
    assert!(result.detail.contains(&by_digest), "{}", result.detail);
    assert!(pulled.is_some());
    let requests: Vec<_> = registry.access_log().split_off(before);
    assert!(
        !requests.is_empty(),
        "the runtime must contact the registry"
    );
    let manifest_head = format!("/v2/pause/manifests/{}", pushed.digest);
    for request in &requests {
        assert!(
            request.method == "HEAD" && request.path.starts_with(&manifest_head)
                || request.path == "/v2/",
            "the runtime check downloaded something: {requests:?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.method == "HEAD" && r.path.starts_with(&manifest_head) && r.status == 200),
        "{requests:?}"
    );

    // The registry gone: the same check fails with containerd's words, classified.
    drop(registry);
    let (result, _) = check::run(
        CheckKind::Runtime,
        PULL_TIMEOUT,
        check::runtime::check(&client, &by_digest, None, PULL_TIMEOUT),
    )
    .await
    .split();
    assert!(!result.ok);
    assert_eq!(result.reason, Some(Reason::TcpRefused), "{}", result.detail);
    assert!(
        result.detail.contains("connection refused"),
        "{}",
        result.detail
    );
    // A failed pull is the runtime answering: it is up.
    assert!(client.state().await.up);
}

/// A pull that outlives its deadline is `pull_timeout`, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_past_its_deadline_is_a_pull_timeout() {
    let stalling = ScriptedServer::builder()
        .route(
            "*",
            "/v2/",
            Response::new(200).delay(Duration::from_secs(20)),
        )
        .start();
    let ctrd = Containerd::start();
    let client = RuntimeClient::new(ctrd.socket(), CALL_TIMEOUT);
    let image = format!("{}/app:1.0", stalling.addr());
    let started = Instant::now();
    let (result, _) = check::run(
        CheckKind::Runtime,
        Duration::from_secs(10),
        check::runtime::check(&client, &image, None, Duration::from_secs(2)),
    )
    .await
    .split();
    assert!(!result.ok);
    assert_eq!(
        result.reason,
        Some(Reason::PullTimeout),
        "{}",
        result.detail
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !stalling.requests().is_empty(),
        "containerd must have asked the registry"
    );
    assert!(client.state().await.up);
    client.version().await.expect("still connected");
}
