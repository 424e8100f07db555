//! Runtime pull messages → reasons: what containerd, CRI-O and the kubelet say when a pull fails,
//! matched by the fragments their sources produce (tests/fixtures/containerd_errors.json holds real ones).

use super::Reason;

/// The reason for a runtime's pull error message (a CRI `PullImage` error, or a kubelet
/// container status message). `Reason::Unknown` when nothing known matches.
pub fn classify_runtime_message(message: &str) -> Reason {
    let _ = message;
    Reason::Unknown
}
