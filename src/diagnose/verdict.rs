//! From check records to a verdict: which endpoint decides, the reason and summary, and how a
//! real runtime pull overrides the chain's word.

use crate::check::{CheckKind, CheckResult};
use crate::reason::Reason;
use crate::report::{EndpointReport, Report};
use crate::route::Role;

/// Folds a `runtime` check into a report. The runtime's verdict decides whether the image is
/// pullable; the check goes last in the chain of the endpoint a failure message names, else of
/// the endpoint that passed, else of the last one. A failed pull's reason is the runtime's, unless
/// only the chain could say more than `runtime_error`.
pub fn with_runtime_check(mut report: Report, result: CheckResult) -> Report {
    let named = report.endpoints.iter().position(|e| {
        !result.ok
            && e.role != Role::Auth
            && e.endpoint
                .split_once("://")
                .is_some_and(|(_, authority)| result.detail.contains(&format!("{authority}/")))
    });
    let at = named
        .or_else(|| report.endpoints.iter().position(|e| e.pullable()))
        .or_else(|| {
            report
                .endpoints
                .iter()
                .rposition(|e| e.role != Role::Auth && e.not_tried.is_none())
        });
    let endpoint = at
        .map(|i| report.endpoints[i].endpoint.clone())
        .unwrap_or_default();
    let chain_summary = std::mem::take(&mut report.summary);
    if result.ok {
        report.summary = if report.pullable {
            format!("{chain_summary}; {}", result.detail)
        } else {
            format!(
                "{}, although pullwatch's own checks failed: {chain_summary}",
                result.detail
            )
        };
        report.pullable = true;
        report.reason = None;
        report.fix = None;
    } else {
        let runtime_reason = result.reason.unwrap_or(Reason::RuntimeError);
        let reason = match (runtime_reason, report.reason) {
            (Reason::RuntimeError | Reason::Unknown, Some(chain)) => chain,
            (runtime, _) => runtime,
        };
        report.summary = if report.pullable {
            format!(
                "the runtime could not pull it: {}; pullwatch's own checks passed: {chain_summary}",
                result.detail
            )
        } else {
            format!(
                "the runtime could not pull it: {}; {chain_summary}",
                result.detail
            )
        };
        report.pullable = false;
        report.reason = Some(reason);
        report.fix = Some(reason.fix(&report.registry, &endpoint));
    }
    if let Some(i) = at {
        report.endpoints[i].checks.push(result);
    }
    report
}

/// Bytes of an unparsable image name kept in its report.
const MAX_IMAGE_SHOWN: usize = 512;

/// The runtime's config forbids the registry (CRI-O `blocked = true`): nothing to probe.
pub(super) fn blocked(image: &str, registry: &str, file: &std::path::Path) -> Report {
    let reason = Reason::Blocked;
    Report {
        image: image.to_string(),
        registry: registry.to_string(),
        pullable: false,
        reason: Some(reason),
        summary: format!("registry {registry} is blocked in {}", file.display()),
        fix: Some(reason.fix(registry, "")),
        endpoints: vec![],
    }
}

/// The input is not a reference: it is shown escaped and capped, as whoever wrote it may be hostile.
pub(super) fn invalid_reference(image: &str, registry: &str, message: String) -> Report {
    let reason = Reason::InvalidReference;
    Report {
        image: crate::text::peer(image, MAX_IMAGE_SHOWN),
        registry: registry.to_string(),
        pullable: false,
        reason: Some(reason),
        summary: crate::text::evidence(&message),
        fix: Some(reason.fix(registry, "")),
        endpoints: vec![],
    }
}

/// Pullable when the manifest check passed on any endpoint (the runtime falls back along the
/// route); otherwise the cause is the last endpoint's failure, the one the runtime reports. A token
/// server's failure shows in the `auth` check of the endpoint that needed it.
pub fn conclude(image: String, registry: String, endpoints: Vec<EndpointReport>) -> Report {
    if let Some(good) = endpoints.iter().find(|e| e.pullable()) {
        let evidence = good
            .checks
            .last()
            .map(|c| c.detail.as_str())
            .unwrap_or_default();
        return Report {
            summary: format!("pullable via {} ({evidence})", good.endpoint),
            image,
            registry,
            pullable: true,
            reason: None,
            fix: None,
            endpoints,
        };
    }
    if let Some(reached) = endpoints
        .iter()
        .find(|e| e.role != Role::Auth && e.passed())
    {
        // Connectivity only (the agent's frequent rounds): nothing failed, nothing proven.
        return Report {
            summary: format!(
                "reachable via {}; the manifest was not checked",
                reached.endpoint
            ),
            image,
            registry,
            pullable: false,
            reason: None,
            fix: None,
            endpoints,
        };
    }
    let last = endpoints
        .iter()
        .rev()
        .filter(|e| e.role != Role::Auth)
        .find_map(|e| e.failure().map(|f| (e, f)));
    let (reason, summary, fix) = match last {
        Some((endpoint, failure)) => {
            let reason = failure.reason.unwrap_or(Reason::Unknown);
            // The first clause says what is wrong; the rest of the evidence is on the check's line.
            let headline = failure.detail.split("; ").next().unwrap_or_default();
            let mut summary = format!(
                "{} ({}): {headline}",
                endpoint.endpoint,
                failure.check.as_str()
            );
            for other in endpoints
                .iter()
                .filter(|e| e.endpoint != endpoint.endpoint && e.role != Role::Auth)
            {
                if let Some(f) = other.failure() {
                    summary.push_str(&format!(
                        "; {} {} also failed: {}",
                        other.role.as_str(),
                        other.endpoint,
                        f.reason.unwrap_or(Reason::Unknown)
                    ));
                }
            }
            // A token server's network failure is fixed at the token server.
            let at = endpoints
                .iter()
                .filter(|e| failure.check == CheckKind::Auth && e.role == Role::Auth)
                .find(|e| e.failure().is_some_and(|f| f.reason == failure.reason))
                .unwrap_or(endpoint);
            (reason, summary, reason.fix(&registry, &at.endpoint))
        }
        None => (
            Reason::Unknown,
            "no endpoint to try".to_string(),
            Reason::Unknown.fix(&registry, ""),
        ),
    };
    Report {
        image,
        registry,
        pullable: false,
        reason: Some(reason),
        summary,
        fix: Some(fix),
        endpoints,
    }
}
