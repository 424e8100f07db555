//! The CRI client against sockets that are missing or hung.

use super::*;

#[tokio::test]
async fn a_missing_socket_is_a_reported_state_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let client = RuntimeClient::new(dir.path().join("none.sock"), Duration::from_secs(1))
        .with_backoff(Backoff {
            base: Duration::from_secs(60),
            max: Duration::from_secs(60),
        });
    let first = client.version().await.expect_err("no runtime");
    assert!(matches!(first, RuntimeError::Unavailable { .. }), "{first}");
    assert_eq!(first.reason(), Reason::RuntimeError);
    // Within the backoff, no new connection is attempted.
    let second = client.version().await.expect_err("no runtime");
    assert!(second.to_string().contains("next reconnect in"), "{second}");
    let state = client.state().await;
    assert!(!state.up);
    assert_eq!(state.consecutive_failures, 1);
    assert!(state.socket.starts_with("unix:///"));
}

/// A socket that accepts every connection and never answers: a hung runtime.
fn hung_runtime(path: &Path) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut held = vec![];
        while let Ok((stream, _)) = listener.accept() {
            held.push(stream);
        }
    })
}

#[tokio::test]
async fn a_hung_runtime_is_down_but_a_slow_pull_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    let _runtime = hung_runtime(&socket);
    let client = RuntimeClient::new(&socket, Duration::from_millis(300)).with_backoff(Backoff {
        base: Duration::from_secs(60),
        max: Duration::from_secs(60),
    });

    let pull = client
        .pull_image(
            "registry.test/app@sha256:00",
            None,
            Duration::from_millis(300),
        )
        .await
        .expect_err("nothing answers");
    assert!(matches!(pull, RuntimeError::Timeout { .. }), "{pull}");
    assert_eq!(pull.reason(), Reason::PullTimeout);
    let state = client.state().await;
    assert!(state.up, "a slow pull took the runtime down: {state:?}");

    let version = client.version().await.expect_err("nothing answers");
    assert!(matches!(version, RuntimeError::Timeout { .. }), "{version}");
    assert_eq!(version.reason(), Reason::RuntimeError);
    let state = client.state().await;
    assert!(!state.up, "a hung runtime looks up: {state:?}");
    assert_eq!(state.consecutive_failures, 1);
    assert!(
        state
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("Version got no answer"),
        "{state:?}"
    );
    // Within the backoff, no call waits on the hung runtime again.
    let started = std::time::Instant::now();
    let again = client.status().await.expect_err("still hung");
    assert!(matches!(again, RuntimeError::Unavailable { .. }), "{again}");
    assert!(started.elapsed() < Duration::from_millis(300));
}
