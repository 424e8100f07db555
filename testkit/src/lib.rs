//! Test harness for pullwatch's integration tests: real local servers (DNS, registry,
//! scripted HTTP), test certificates, network namespaces, and a runner for the binary.
//!
//! Every helper is bounded (each wait has a timeout and panics naming what did not come
//! up), cleans up on `Drop`, and is safe to use from many test processes at once.
//! A dev-dependency of pullwatch (as `testkit`) for its integration tests (`tests/real/`), the
//! footprint bench and the demo's fake cluster (`examples/demo_cluster.rs`).

pub mod agent;
pub mod certs;
pub mod cli;
pub mod containerd;
pub mod cost;
pub mod dns;
pub mod http;
pub mod image;
pub mod kube_api;
pub mod netns;
pub mod port_gate;
pub mod ports;
pub mod prometheus;
pub mod registry;
pub mod relay;
pub mod scripted;
pub mod server;
pub mod watchdog;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name unique among all live test processes on this machine: `<pid>-<counter>`.
pub fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A 64-bit value that differs between calls, processes and runs; for picking
/// addresses and random test data. Not cryptographic.
pub fn entropy() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Polls `ready` every 20 ms until it returns `Some`, or panics after `timeout`
/// with a message naming `what` did not happen.
pub fn wait_for<T>(what: &str, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a program to completion (bounded by `timeout`) and returns its stdout;
/// panics with the program's stderr if it is missing, fails, or hangs.
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> String {
    let out = cli::run_bounded(
        std::process::Command::new(program).args(args),
        stdin,
        timeout,
    )
    .unwrap_or_else(|e| panic!("cannot run `{program}` (is it installed?): {e}"));
    if out.code != Some(0) {
        panic!(
            "`{program} {}` failed ({:?}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
    }
    out.stdout
}
