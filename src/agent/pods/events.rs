//! The diagnosis Event on a pod (events.k8s.io/v1): what the kubelet said, what this node's own
//! checks found, and the fix, in at most 1 KiB, so `kubectl describe pod` shows it.

use std::time::Duration;

use std::time::SystemTime;

use super::api::{self, ApiClient, ApiError};
use super::object::{Event, ObjectMeta, ObjectReference};

use super::failures::{ContainerKind, Failure, PodId};
use crate::reason::Reason;
use crate::report::Report;
use crate::text::{clip, peer};

/// The Event's `reason`.
pub const EVENT_REASON: &str = "PullDiagnosis";
/// The Event's `reportingController`.
pub const CONTROLLER: &str = "pullwatch";
/// The Event's `action`: what pullwatch did about the pod.
const ACTION: &str = "DiagnosePull";
/// events.k8s.io/v1 refuses a `note` longer than this.
pub const MAX_NOTE: usize = 1024;
/// The API server refuses a `reportingInstance` longer than this.
const MAX_INSTANCE: usize = 128;
/// Room for each part of the note, so that the fix always fits.
const MAX_KUBELET: usize = 320;
const MAX_NAME: usize = 128;

/// The cause the Event names: the kubelet's when its message had one, else this node's checks'.
pub fn cause(failure: &Failure, report: &Report) -> Reason {
    best_cause(failure.reason, report.reason)
}

/// The kubelet's (runtime's) cause when its message names one, else what this node found.
pub fn best_cause(said: Reason, found: Option<Reason>) -> Reason {
    match (said, found) {
        (Reason::Unknown, Some(found)) => found,
        (said, _) => said,
    }
}

/// The Event's note: cause, the kubelet's words, this node's evidence, the fix; at most [`MAX_NOTE`] bytes.
pub fn note(node: &str, container: &str, failure: &Failure, report: &Report) -> String {
    let cause = cause(failure, report);
    // Every part a peer wrote (the kubelet's words, the image name, the evidence) is escaped: a
    // newline or a terminal escape in them must not reach `kubectl describe` raw.
    let kubelet = peer(
        &format!("{}: {}", failure.waiting_reason, failure.message),
        MAX_KUBELET,
    );
    let evidence = if report.pullable {
        format!(
            "the image is pullable from this node ({}); the pod's own credentials (imagePullSecrets) or a passing outage may explain the failure",
            report.summary
        )
    } else {
        match report.reason {
            Some(found) => format!("{found}: {}", report.summary),
            None => report.summary.clone(),
        }
    };
    let fix = match (&report.fix, report.reason) {
        (Some(fix), Some(found)) if found == cause => fix.clone(),
        _ => {
            let endpoint = report
                .endpoints
                .first()
                .map_or(report.registry.as_str(), |e| e.endpoint.as_str());
            cause.fix(&failure.registry, endpoint)
        }
    };
    // The evidence gets whatever room the rest leaves, so the fix is never cut off.
    let head = format!(
        "{cause}: container {container} cannot pull {image}. Kubelet: {kubelet}. Checked from node {node}: ",
        container = peer(container, MAX_NAME),
        image = peer(&failure.image, MAX_NAME),
        node = peer(node, MAX_NAME),
    );
    let tail = format!(". Fix: {fix}");
    let room = MAX_NOTE.saturating_sub(head.len() + tail.len());
    let text = format!("{head}{}{tail}", peer(&evidence, room));
    clip(&text, MAX_NOTE)
}

/// Posts `note` as a Warning Event regarding the container of `pod`, within `timeout`.
///
/// Always a new Event, never a patch of an earlier one's series: pullwatch decides itself when a
/// diagnosis is new, and a new diagnosis of the same container must not rewrite the old note.
pub async fn post(
    client: &ApiClient,
    node: &str,
    pod: &PodId,
    kind: ContainerKind,
    container: &str,
    note: String,
    timeout: Duration,
) -> Result<(), ApiError> {
    let event = event(node, pod, kind, container, note, SystemTime::now());
    let path = format!(
        "/apis/events.k8s.io/v1/namespaces/{}/events",
        api::escape(&pod.namespace)
    );
    client.post(&path, &event, timeout).await
}

/// The Event object: named after the pod and the time (as client-go's recorder names them), in
/// the pod's namespace.
fn event(
    node: &str,
    pod: &PodId,
    kind: ContainerKind,
    container: &str,
    note: String,
    now: SystemTime,
) -> Event {
    let regarding = ObjectReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        field_path: kind.field_path(container),
    };
    // `<pod>.<nanoseconds, hex>`: a name stays within 253 characters and is unique per Event.
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let prefix = pod.name.get(..MAX_EVENT_NAME_PREFIX).unwrap_or(&pod.name);
    let name = format!("{}.{nanos:x}", prefix.trim_end_matches(['-', '.']));
    Event {
        api_version: "events.k8s.io/v1",
        kind: "Event",
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: humantime::format_rfc3339_micros(now).to_string(),
        type_: "Warning",
        reason: EVENT_REASON,
        action: ACTION,
        note,
        regarding,
        reporting_controller: CONTROLLER,
        reporting_instance: clip(node, MAX_INSTANCE),
    }
}

/// Room for the pod's name in an Event's name, before `.` and up to 32 hex digits.
const MAX_EVENT_NAME_PREFIX: usize = 253 - 33;

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::check::{CheckKind, CheckResult};
    use crate::report::EndpointReport;
    use crate::route::Role;

    fn failure(reason: Reason, message: &str) -> Failure {
        Failure {
            kind: ContainerKind::Container,
            image: "missing.test/app:1.0".into(),
            registry: "missing.test".into(),
            waiting_reason: "ErrImagePull".into(),
            message: message.into(),
            reason,
            attempts: 1,
            since: SystemTime::now(),
            reason_since: SystemTime::now(),
        }
    }

    fn nxdomain_report() -> Report {
        Report {
            image: "missing.test/app:1.0".into(),
            registry: "missing.test".into(),
            pullable: false,
            reason: Some(Reason::DnsNxdomain),
            summary: "https://missing.test (dns): missing.test: A NXDOMAIN in 1ms, AAAA NXDOMAIN in 1ms (nameserver 127.0.0.1:53)".into(),
            fix: Some(Reason::DnsNxdomain.fix("missing.test", "https://missing.test")),
            endpoints: vec![EndpointReport {
                endpoint: "https://missing.test".into(),
                role: Role::Upstream,
                source: "default".into(),
                rules: None,
                not_tried: None,
                checks: vec![CheckResult {
                    check: CheckKind::Dns,
                    ok: false,
                    seconds: 0.001,
                    detail: "NXDOMAIN".into(),
                    reason: Some(Reason::DnsNxdomain),
                }],
            }],
        }
    }

    #[test]
    fn the_note_joins_the_kubelet_and_the_evidence() {
        struct Case {
            name: &'static str,
            failure: Failure,
            report: Report,
            want_cause: Reason,
            want: &'static [&'static str],
        }
        let pullable = Report {
            pullable: true,
            reason: None,
            fix: None,
            summary: "pullable via https://missing.test (manifest found)".into(),
            ..nxdomain_report()
        };
        let cases = [
            Case {
                name: "both agree",
                failure: failure(Reason::DnsNxdomain, "lookup missing.test: no such host"),
                report: nxdomain_report(),
                want_cause: Reason::DnsNxdomain,
                want: &[
                    "dns_nxdomain: container app cannot pull missing.test/app:1.0.",
                    "Kubelet: ErrImagePull: lookup missing.test: no such host.",
                    "Checked from node node-1: dns_nxdomain: https://missing.test (dns): missing.test: A NXDOMAIN",
                    "Fix: check the spelling of missing.test",
                ],
            },
            Case {
                name: "the kubelet's message had no cause: the checks name it",
                failure: failure(Reason::Unknown, "Back-off pulling image"),
                report: nxdomain_report(),
                want_cause: Reason::DnsNxdomain,
                want: &["dns_nxdomain: container app", "Fix: check the spelling"],
            },
            Case {
                name: "pullable from the node: the kubelet's cause, and a hint",
                failure: failure(Reason::AuthRequired, "401 Unauthorized"),
                report: pullable,
                want_cause: Reason::AuthRequired,
                want: &[
                    "auth_required: container app",
                    "the image is pullable from this node",
                    "imagePullSecrets",
                    "Fix: create an imagePullSecret for missing.test",
                ],
            },
        ];
        for case in cases {
            assert_eq!(
                cause(&case.failure, &case.report),
                case.want_cause,
                "{}",
                case.name
            );
            let note = note("node-1", "app", &case.failure, &case.report);
            for want in case.want {
                assert!(note.contains(want), "{}: {want:?} not in {note}", case.name);
            }
        }
    }

    #[test]
    fn the_note_fits_in_a_kibibyte_with_its_fix() {
        let long = "é".repeat(3000);
        let mut report = nxdomain_report();
        report.summary = long.clone();
        let note = note(
            "node-1",
            "app",
            &failure(Reason::DnsNxdomain, &long),
            &report,
        );
        assert!(note.len() <= MAX_NOTE, "{}", note.len());
        assert!(
            note.contains("Fix: check the spelling of missing.test"),
            "{note}"
        );
    }

    #[test]
    fn the_note_carries_no_raw_control_character() {
        let mut hostile = failure(
            Reason::DnsNxdomain,
            "lookup failed\nWarning  Pulled  image is fine\u{1b}[8m",
        );
        hostile.image = "missing.test/app:1.0\r\nFix: nothing".into();
        let mut report = nxdomain_report();
        report.summary = "evidence\u{7}\u{202e}".into();
        let note = note("node-1", "app", &hostile, &report);
        assert!(!note.chars().any(char::is_control), "{note:?}");
        assert!(!note.contains('\u{202e}'), "{note:?}");
        assert!(
            note.contains("lookup failed\\nWarning  Pulled") && note.contains("1.0\\r\\nFix"),
            "{note}"
        );
    }
}
