//! The user reference in `docs/` kept in step with the code, both ways: a reason, metric or JSON
//! field without its documented row fails here, and so does a row for one that no longer exists.
//! (The flags are checked in `src/main.rs`, where the command line is.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::reason::{Reason, classify_runtime_message};

const REASONS: &str = include_str!("../docs/reasons.md");
const METRICS: &str = include_str!("../docs/metrics.md");
const REPORT: &str = include_str!("../docs/report.md");

/// The rows of the tables between the heading `section` and the next heading of its level whose
/// first cell is backticked: that name, and all the cells (`\|` inside a cell is a `|`).
fn rows(doc: &str, section: &str) -> Vec<(String, Vec<String>)> {
    let level = section.split(' ').next().unwrap_or_default();
    let start = doc
        .lines()
        .position(|l| l == section)
        .unwrap_or_else(|| panic!("no heading {section:?}"));
    doc.lines()
        .skip(start + 1)
        .take_while(|l| !(l.starts_with(level) && l[level.len()..].starts_with(' ')))
        .filter_map(|line| {
            let line = line.trim().strip_prefix('|')?.strip_suffix('|')?;
            let cells: Vec<String> = line
                .replace("\\|", "\u{0}")
                .split('|')
                .map(|c| c.trim().replace('\u{0}', "|"))
                .collect();
            let name = cells[0].strip_prefix('`')?.split('`').next()?.to_string();
            Some((name, cells))
        })
        .collect()
}

/// The backticked spans of a cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// `rows` by name; a name documented twice fails.
fn by_name(rows: Vec<(String, Vec<String>)>) -> BTreeMap<String, Vec<String>> {
    let mut named = BTreeMap::new();
    for (name, cells) in rows {
        assert!(
            named.insert(name.clone(), cells).is_none(),
            "{name} is documented twice"
        );
    }
    named
}

/// Both directions at once, so one run names every difference.
fn assert_same(what: &str, documented: &BTreeSet<String>, actual: &BTreeSet<String>) {
    let missing: Vec<&String> = actual.difference(documented).collect();
    let extra: Vec<&String> = documented.difference(actual).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: in the code but not documented: {missing:?}; documented but not in the code: {extra:?}"
    );
}

#[test]
fn reasons_md_lists_every_reason_with_its_fix_and_messages() {
    let documented = by_name(rows(REASONS, "## Reasons"));
    let names: BTreeSet<String> = documented.keys().cloned().collect();
    let actual: BTreeSet<String> = Reason::ALL.iter().map(|r| r.as_str().into()).collect();
    assert_same("docs/reasons.md", &names, &actual);
    for reason in Reason::ALL {
        let cells = &documented[reason.as_str()];
        assert_eq!(
            cells.len(),
            5,
            "{reason}: reason | meaning | given by | messages | fix"
        );
        // The fix as `Reason::fix` writes it, with the placeholders the page explains.
        assert_eq!(
            cells[4],
            reason.fix("REGISTRY", "https://HOST:PORT"),
            "{reason}: the documented fix"
        );
        for fragment in code_spans(&cells[3]) {
            assert_eq!(
                classify_runtime_message(fragment),
                reason,
                "{reason}: documented message {fragment:?}"
            );
        }
    }
}

#[test]
fn metrics_md_lists_every_metric_with_its_type_and_labels() {
    let documented = by_name(rows(METRICS, "## Metrics"));
    let documented: BTreeSet<String> = documented
        .iter()
        .map(|(name, cells)| {
            assert_eq!(cells.len(), 4, "{name}: metric | type | labels | meaning");
            let mut labels: Vec<&str> = code_spans(&cells[2]);
            labels.push("node");
            labels.sort_unstable();
            format!("{name} {} {{{}}}", cells[1], labels.join(","))
        })
        .collect();

    // From the exposition: `# TYPE name kind`, and the label names of each name's samples.
    let text = crate::agent::metrics::every_family_filled()
        .encode()
        .unwrap();
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    let mut labels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').unwrap();
            kinds.insert(name, kind);
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let names = line
                .split_once('{')
                .map(|(_, rest)| rest.split('}').next().unwrap_or_default())
                .unwrap_or_default()
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(label, _)| label));
            labels.entry(name).or_default().extend(names);
        }
    }
    let actual: BTreeSet<String> = kinds
        .iter()
        .filter(|(name, _)| name.starts_with("pullwatch_"))
        .map(|(name, kind)| {
            let labels: Vec<&str> = labels[name].iter().copied().collect();
            format!("{name} {kind} {{{}}}", labels.join(","))
        })
        .collect();
    assert_same("docs/metrics.md (name type {labels})", &documented, &actual);
}

/// Every field path of `value` (`a`, `a[].b`) with the JSON types met there.
fn fields(value: &Value, path: &str, out: &mut BTreeMap<String, BTreeSet<&'static str>>) {
    let join = |key: &str| match path {
        "" => key.to_string(),
        _ => format!("{path}.{key}"),
    };
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let field = join(key);
                out.entry(field.clone()).or_default().insert(kind(value));
                fields(value, &field, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                fields(item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// The word docs/report.md uses for a JSON type.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Compares the fields of `samples` with the table under `section`: paths both ways, and each
/// type met is named in the type column. `shared` maps a path prefix to the section whose table
/// describes what is under it (a report inside the status), checked the same way.
fn assert_documented(
    section: &str,
    samples: &[Value],
    shared: &[(&str, &str, &str)],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    for sample in samples {
        fields(sample, "", &mut found);
    }
    // Path (in the section that documents it) → types, per section.
    let mut by_section: BTreeMap<String, BTreeMap<String, BTreeSet<&str>>> = BTreeMap::new();
    for (path, kinds) in found {
        let (section, path) = shared
            .iter()
            .find_map(|(prefix, other, replacement)| {
                path.strip_prefix(prefix)
                    .map(|rest| (other.to_string(), format!("{replacement}{rest}")))
            })
            .unwrap_or((section.to_string(), path));
        by_section
            .entry(section)
            .or_default()
            .entry(path)
            .or_default()
            .extend(kinds);
    }
    let mut seen = BTreeMap::new();
    for (section, found) in by_section {
        let documented = by_name(rows(REPORT, &section));
        for (path, kinds) in &found {
            let Some(cells) = documented.get(path) else {
                continue;
            };
            for kind in kinds {
                let named = cells[1].contains(kind) || (*kind == "integer" && cells[1] == "number");
                assert!(
                    named,
                    "{section} `{path}`: a JSON {kind}, documented as {}",
                    cells[1]
                );
            }
        }
        seen.insert(section, found.into_keys().collect());
    }
    seen
}

/// The fields of `section` in docs/report.md.
fn documented_fields(section: &str) -> BTreeSet<String> {
    by_name(rows(REPORT, section)).into_keys().collect()
}

fn sample_report() -> crate::report::Report {
    use crate::check::{CheckKind, CheckResult};
    use crate::report::{EndpointReport, Report};
    use crate::route::Role;

    let check = |check, reason: Option<Reason>| CheckResult {
        check,
        ok: reason.is_none(),
        seconds: 0.012,
        detail: "evidence".into(),
        reason,
    };
    Report {
        image: "docker.io/library/nginx:1.277".into(),
        registry: "docker.io".into(),
        pullable: false,
        reason: Some(Reason::ManifestUnknown),
        summary: "tag 1.277 not found".into(),
        fix: Some(Reason::ManifestUnknown.fix("docker.io", "https://registry-1.docker.io")),
        endpoints: vec![
            EndpointReport {
                endpoint: "https://registry-1.docker.io".into(),
                role: Role::Upstream,
                source: "default".into(),
                rules: Some("containerd 1.7.13".into()),
                not_tried: None,
                checks: vec![
                    check(CheckKind::Dns, None),
                    check(CheckKind::Manifest, Some(Reason::ManifestUnknown)),
                ],
            },
            EndpointReport {
                endpoint: "https://mirror.example".into(),
                role: Role::Mirror,
                source: "/etc/containerd/certs.d/docker.io/hosts.toml".into(),
                rules: Some("containerd 1.7.13".into()),
                not_tried: Some("diagnose's time ran out (1m = 12 × --timeout) before it".into()),
                checks: vec![],
            },
        ],
    }
}

#[test]
fn report_md_lists_every_field_of_diagnose_json() {
    const SECTION: &str = "## diagnose --output json";
    let report = serde_json::from_str(&sample_report().to_json_line()).unwrap();
    let seen = assert_documented(SECTION, &[report], &[]);
    assert_same(
        "docs/report.md, diagnose",
        &documented_fields(SECTION),
        &seen[SECTION],
    );
}

#[test]
fn report_md_lists_every_field_of_the_status() {
    use crate::agent::status::PodFailure;
    use crate::agent::status::{RegistryStatus, Status};

    const SECTION: &str = "## /api/v1/status";
    const REPORT_SECTION: &str = "## diagnose --output json";
    let report = sample_report();
    let status = Status {
        node: "node-1".into(),
        ready: true,
        registries: vec![RegistryStatus {
            report: crate::report::Report {
                image: String::new(),
                ..report.clone()
            },
            unverified: Some(
                "unverified: no credentials (looked in /var/lib/kubelet/config.json)".into(),
            ),
            checked_at: "2025-06-01T12:00:00.123Z".into(),
        }],
        failures: vec![PodFailure {
            namespace: "shop".into(),
            pod: "web".into(),
            container: "app".into(),
            failure: crate::agent::pods::failures::Failure {
                kind: crate::agent::pods::failures::ContainerKind::Container,
                image: "nginx:1.277".into(),
                registry: "docker.io".into(),
                waiting_reason: "ErrImagePull".into(),
                message: "not found".into(),
                reason: Reason::ManifestUnknown,
                attempts: 3,
                since: humantime::parse_rfc3339("2025-06-01T11:58:00Z").unwrap(),
                reason_since: std::time::SystemTime::UNIX_EPOCH,
            },
            diagnosis: Some(std::sync::Arc::new(report)),
        }],
    };
    let status = serde_json::to_value(&status).unwrap();
    // The endpoints and the diagnosis inside are the report's, documented once, with it.
    let shared = [
        ("registries[].endpoints[]", REPORT_SECTION, "endpoints[]"),
        ("failures[].diagnosis.", REPORT_SECTION, ""),
    ];
    let seen = assert_documented(SECTION, &[status], &shared);
    assert_same(
        "docs/report.md, /api/v1/status",
        &documented_fields(SECTION),
        &seen[SECTION],
    );
    let report = &seen[REPORT_SECTION];
    assert!(
        report.contains("endpoints[].checks[].seconds") && report.contains("image"),
        "{report:?}"
    );
    let documented = documented_fields(REPORT_SECTION);
    let extra: Vec<&String> = report.difference(&documented).collect();
    assert!(extra.is_empty(), "not in the report's table: {extra:?}");
}

#[test]
fn report_md_lists_every_field_of_targets_json() {
    use crate::route::Role;
    use crate::targets::{ListedEndpoint, ListedRegistry};

    const SECTION: &str = "## targets --output json";
    // Every optional field set.
    let target = ListedRegistry {
        registry: "example.com".into(),
        sources: vec!["runtime images (2)".into()],
        config: "cri-o",
        runtime: Some("cri-o 1.30.0".into()),
        rules: "cri-o 1.30.0".into(),
        blocked_by: Some("/etc/containers/registries.conf".into()),
        endpoints: vec![ListedEndpoint {
            endpoint: "https://internal.example".into(),
            role: Role::Mirror,
            source: "/etc/containers/registries.conf:12".into(),
            capabilities: vec!["pull", "resolve"],
            path: "/v2".into(),
            location: Some("internal.example/bar".into()),
            ca_files: vec!["/etc/containers/certs.d/internal.example/ca.crt".into()],
            client_certs: vec!["/etc/containers/certs.d/internal.example/client.cert".into()],
            skip_verify: false,
            http_fallback: Some("HTTP on port 80 when the server answers plain HTTP".into()),
            headers: vec!["x-mirror-token".into()],
            dial_timeout: Some("5s".into()),
        }],
        problems: vec!["/etc/containers/registries.conf:3: unknown key".into()],
    };
    let target = serde_json::to_value(&target).unwrap();
    let seen = assert_documented(SECTION, &[target], &[]);
    assert_same(
        "docs/report.md, targets",
        &documented_fields(SECTION),
        &seen[SECTION],
    );
}
