//! The diagnosis of one image: the JSON object of `docs/report.md` (one per line) and the text a person
//! reads (one line per check with ✓/✗, duration and evidence, then `Cause:` and `Fix:`).

use serde::{Deserialize, Serialize};

use crate::check::{CheckKind, CheckResult};
use crate::reason::Reason;
use crate::route::{Endpoint, Role};

/// Everything `diagnose` found out about one image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The normalised reference (or the input, when it could not be parsed); a registry's own
    /// round (the agent's status) names none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    pub registry: String,
    pub pullable: bool,
    pub reason: Option<Reason>,
    pub summary: String,
    pub fix: Option<String>,
    pub endpoints: Vec<EndpointReport>,
}

/// The checks run against one endpoint of the route, in chain order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointReport {
    pub endpoint: String,
    pub role: Role,
    pub source: String,
    /// The runtime and version whose routing rules put this endpoint on the route
    /// (`containerd 1.7.13`); absent when no runtime is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    pub checks: Vec<CheckResult>,
    /// Why no check ran here: the image proved pullable at an earlier endpoint (where the runtime
    /// stops), or diagnose's time ran out. Absent when the endpoint was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_tried: Option<String>,
}

impl EndpointReport {
    /// The check that stopped the chain, if any.
    pub fn failure(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| !c.ok)
    }

    /// The chain ran and nothing failed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.failure().is_none()
    }

    /// The runtime could pull from here: a registry endpoint whose manifest check passed.
    pub fn pullable(&self) -> bool {
        self.role != Role::Auth
            && self.passed()
            && self.checks.iter().any(|c| c.check == CheckKind::Manifest)
    }
}

/// Adds a token server's checks to `endpoints`, once: after the first endpoint that sent the
/// runtime there (several registry endpoints usually share one token server).
pub fn push_token_server(
    endpoints: &mut Vec<EndpointReport>,
    server: &Endpoint,
    checks: Vec<CheckResult>,
) {
    let url = server.url();
    if endpoints
        .iter()
        .any(|e| e.endpoint == url && e.role == server.role)
    {
        return;
    }
    endpoints.push(EndpointReport {
        endpoint: url,
        role: server.role,
        source: server.source.clone(),
        rules: None,
        checks,
        not_tried: None,
    });
}

impl Report {
    /// One JSON object, no newline inside.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode report: {e}\"}}"))
    }

    /// The human report.
    pub fn to_text(&self) -> String {
        let mark = if self.pullable { "✓" } else { "✗" };
        let verdict = if self.pullable {
            "pullable"
        } else {
            "NOT pullable"
        };
        // A terminal gets no raw control character from any field, whoever filled it in.
        let shown = crate::text::escape;
        let mut out = format!("{mark} {}: {verdict}\n", shown(&self.image));
        for endpoint in &self.endpoints {
            let rules = endpoint
                .rules
                .as_deref()
                .map(|rules| format!("; {rules} rules"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {} ({}, {}{rules})\n",
                shown(&endpoint.endpoint),
                endpoint.role.as_str(),
                shown(&endpoint.source)
            ));
            if let Some(why) = &endpoint.not_tried {
                out.push_str(&format!("    – not tried: {why}\n"));
            }
            for check in &endpoint.checks {
                let mark = if check.ok { "✓" } else { "✗" };
                let seconds =
                    crate::text::short_duration(std::time::Duration::from_secs_f64(check.seconds));
                out.push_str(&format!(
                    "    {mark} {:<8} {seconds:>7}  {}\n",
                    check.check.as_str(),
                    shown(&check.detail)
                ));
            }
        }
        match (self.reason, &self.fix) {
            (Some(reason), Some(fix)) => {
                out.push_str(&format!("  Cause: {reason}: {}\n", shown(&self.summary)));
                out.push_str(&format!("  Fix: {}\n", shown(fix)));
            }
            _ => out.push_str(&format!("  {}\n", shown(&self.summary))),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckKind;

    fn check(check: CheckKind, ok: bool) -> CheckResult {
        CheckResult {
            check,
            ok,
            seconds: 0.012,
            detail: format!("{} evidence", check.as_str()),
            reason: (!ok).then_some(Reason::TlsExpired),
        }
    }

    #[test]
    fn text_has_a_line_per_check_then_cause_and_fix() {
        let report = Report {
            image: "registry.test/app:1".into(),
            registry: "registry.test".into(),
            pullable: false,
            reason: Some(Reason::TlsExpired),
            summary: "tls failed".into(),
            fix: Some("renew it".into()),
            endpoints: vec![EndpointReport {
                endpoint: "https://registry.test".into(),
                role: Role::Upstream,
                source: "default".into(),
                rules: None,
                not_tried: None,
                checks: vec![check(CheckKind::Dns, true), check(CheckKind::Tls, false)],
            }],
        };
        let text = report.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "✗ registry.test/app:1: NOT pullable");
        assert!(
            lines[2].contains("✓ dns")
                && lines[2].contains("12ms")
                && lines[2].ends_with("dns evidence"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("✗ tls"), "{}", lines[3]);
        assert_eq!(lines[4], "  Cause: tls_expired: tls failed");
        assert_eq!(lines[5], "  Fix: renew it");
        assert!(!report.endpoints[0].passed());

        let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).unwrap();
        assert_eq!(json["reason"], "tls_expired");
        assert_eq!(json["endpoints"][0]["role"], "upstream");
        assert_eq!(json["endpoints"][0]["checks"][1]["check"], "tls");
        assert!(json["endpoints"][0]["checks"][0].get("reason").is_none());
    }
}
