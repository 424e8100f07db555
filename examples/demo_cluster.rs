//! The demo's stand-in for a cluster (`scripts/demo.sh`): the test harness's fake Kubernetes API
//! serving one pod on node `demo-node` stuck in `ErrImagePull` for a tag that does not exist.
//!
//! `cargo run --example demo_cluster -- IMAGE` prints `kubeconfig <path>` (for `KUBECONFIG`) and
//! the pod's state, then `event <reason> <namespace>/<pod>` as Events arrive; when stdin closes,
//! on SIGINT/SIGTERM, or after ten minutes, it prints the pod and the Events it received, laid out
//! like `kubectl describe pod` (abridged: no kubelet here, so no kubelet Events).
//! The kubelet's message has the real shape: containerd's text for a missing tag
//! (tests/fixtures/containerd_errors.json, case `unknown_tag`) with IMAGE in it.

use std::io::Read;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::kube_api::{KubeApi, kubelet_message, pod};

const NODE: &str = "demo-node";
const NAMESPACE: &str = "shop";
const POD: &str = "web";
const CONTAINER: &str = "app";
/// The corpus case whose message the pod's status carries.
const CASE: &str = "unknown_tag";
/// The server stops by itself after this, should whoever started it forget to.
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// How often new Events are looked for.
const POLL: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(image), None) = (args.next(), args.next()) else {
        eprintln!("usage: demo_cluster IMAGE (an image whose tag does not exist)");
        return ExitCode::from(2);
    };
    let api = KubeApi::start(NODE);
    let (corpus_image, message) = kubelet_message(CASE);
    let message = message.replace(&corpus_image, &image);
    api.apply_pod(
        pod(NAMESPACE, POD, "uid-demo-web", NODE)
            .waiting(CONTAINER, &image, "ErrImagePull", &message)
            .build(),
    );
    println!("kubeconfig {}", api.kubeconfig_str());
    println!(
        "pod {NAMESPACE}/{POD} on {NODE}: container {CONTAINER} ({image}) waiting: ErrImagePull: {message}"
    );

    let (stop, stopped) = mpsc::channel::<&str>();
    let on_eof = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = on_eof.send("stdin closed");
    });
    std::thread::spawn(move || {
        let _ = stop.send(wait_for_signal());
    });

    let deadline = Instant::now() + MAX_LIFETIME;
    let mut announced = 0;
    let why = loop {
        for event in api.events().iter().skip(announced) {
            println!(
                "event {} {}/{}",
                text(&event["reason"]),
                text(&event["regarding"]["namespace"]),
                text(&event["regarding"]["name"])
            );
            announced += 1;
        }
        match stopped.recv_timeout(POLL) {
            Ok(why) => break why,
            Err(mpsc::RecvTimeoutError::Disconnected) => break "no way left to stop",
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                break "ran for its longest lifetime";
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    println!("(fake API server stopping: {why})");
    describe(&image, &message, &api.events());
    for violation in api.violations() {
        println!("violation: {violation}");
    }
    ExitCode::SUCCESS
}

/// Waits for SIGINT or SIGTERM; returns which.
fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return "no signal handling";
    };
    runtime.block_on(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return "no signal handling";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// The pod and its Events, laid out like `kubectl describe pod` (the parts this demo has).
fn describe(image: &str, message: &str, events: &[Value]) {
    println!("Name:         {POD}");
    println!("Namespace:    {NAMESPACE}");
    println!("Node:         {NODE}");
    println!("Containers:");
    println!("  {CONTAINER}:");
    println!("    Image:      {image}");
    println!("    State:      Waiting");
    println!("      Reason:   ErrImagePull");
    println!("      Message:  {message}");
    println!("Events:");
    if events.is_empty() {
        println!("  <none>");
        return;
    }
    println!("  Type     Reason         From                   Message");
    println!("  ----     ------         ----                   -------");
    for event in events {
        let from = format!(
            "{} ({})",
            text(&event["reportingController"]),
            text(&event["reportingInstance"])
        );
        println!(
            "  {:<8} {:<14} {from:<22} {}",
            text(&event["type"]),
            text(&event["reason"]),
            text(&event["note"])
        );
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}
