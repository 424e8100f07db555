//! `deploy/` keeps the documented promises: the alert rules pass real `promtool` unit tests,
//! the DaemonSet sees the node as the runtime does, RBAC is minimal (secrets only through the
//! opt-in component, `get` only), and every metric the alerts and the dashboard use is one the
//! agent exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// All YAML documents of a manifest file.
fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn document(path: &str, kind: &str) -> Value {
    documents(path)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {path}"))
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("promtool is required (Debian package prometheus): {e}"));
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let rule = document("deploy/prometheusrule.yaml", "PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    let rules = serde_norway::to_string(&rule["spec"]).unwrap();
    std::fs::write(dir.path().join("pullwatch.rules.yml"), rules).unwrap();
    std::fs::copy(
        repo().join("deploy/alerts/pullwatch.rules.test.yml"),
        dir.path().join("pullwatch.rules.test.yml"),
    )
    .unwrap();
    promtool(&["check", "rules", "pullwatch.rules.yml"], dir.path());
    promtool(&["test", "rules", "pullwatch.rules.test.yml"], dir.path());
}

/// `pullwatch_…` names in a text, with histogram/counter suffixes kept as written.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("pullwatch_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn source_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&source_text(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    text
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    // The names src/ writes as string literals (the metric constants), not those a comment mentions.
    let exported: BTreeSet<String> = source_text(&repo().join("src"))
        .split("\"pullwatch_")
        .skip(1)
        .filter_map(|rest| rest.split_once('"'))
        .map(|(name, _)| format!("pullwatch_{name}"))
        .filter(|name| metric_names(name).contains(name))
        .collect();
    assert!(exported.len() >= 28, "{exported:?}");
    let dashboard = read("deploy/dashboards/pullwatch.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    for (file, text) in [
        (
            "deploy/prometheusrule.yaml",
            read("deploy/prometheusrule.yaml"),
        ),
        ("dashboard", dashboard),
    ] {
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses metrics");
        let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics src/ does not export: {missing:?}"
        );
    }
}

/// The per-check series a healthy endpoint exports only with `--metrics-detail`.
const DETAIL_ONLY: [&str; 5] = [
    "pullwatch_check_success",
    "pullwatch_check_duration_seconds",
    "pullwatch_dns_addresses",
    "pullwatch_tcp_addresses_reachable",
    "pullwatch_http_status_code",
];

#[test]
fn alerts_and_dashboard_work_with_the_default_series() {
    let alerts = metric_names(&read("deploy/prometheusrule.yaml"));
    for name in DETAIL_ONLY {
        assert!(
            !alerts.contains(name),
            "an alert uses {name}, which a healthy endpoint has only with --metrics-detail"
        );
    }
    // A panel may show a detail series (a failing endpoint has it) when it says so.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/dashboards/pullwatch.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let used = metric_names(&panel["targets"].to_string());
        if DETAIL_ONLY.iter().any(|name| used.contains(*name)) {
            assert!(
                panel["title"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("--metrics-detail"),
                "panel {} uses a detail series without saying so",
                panel["title"]
            );
        }
    }
}

#[test]
fn a_rollout_waits_for_ready_pods_that_stay_ready() {
    let ds = document("deploy/daemonset.yaml", "DaemonSet");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    // Longer than the first round's spread (10s): a pod that crashes on it stops the rollout.
    let min_ready = ds["spec"]["minReadySeconds"]
        .as_u64()
        .expect("minReadySeconds");
    assert!((10..=60).contains(&min_ready), "{min_ready}");
    let probe = &ds["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
    assert!(probe["periodSeconds"].as_u64().expect("periodSeconds") <= 5);
}

#[test]
fn daemonset_sees_the_node_like_the_runtime() {
    let ds = document("deploy/daemonset.yaml", "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "checks use the node's network");
    assert_eq!(
        pod["dnsPolicy"], "Default",
        "checks use the node's resolver"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"][0]["operator"], "Exists",
        "runs on every node, tainted or not"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "agent");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["resources"]["requests"]["cpu"], "10m");
    assert_eq!(container["resources"]["requests"]["memory"], "32Mi");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    let env = container["env"].as_sequence().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );

    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"))
    };
    for path in [
        "/run/containerd",
        "/etc/containerd/certs.d",
        "/etc/containers",
    ] {
        assert_eq!(mount(path)["readOnly"], true, "{path} is mounted read-only");
    }
    assert_ne!(
        mount("/run/pullwatch")["readOnly"],
        true,
        "the API socket directory is writable"
    );
}

/// `resource:verb` for every rule of every Role and ClusterRole among `docs`.
fn grants(docs: &[Value]) -> BTreeSet<String> {
    let mut grants = BTreeSet::new();
    for role in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        for rule in role["rules"].as_sequence().expect("rules") {
            for resource in rule["resources"].as_sequence().unwrap() {
                for verb in rule["verbs"].as_sequence().unwrap() {
                    grants.insert(format!(
                        "{}:{}",
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    grants
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const BASE_GRANTS: &[&str] = &[
    "pods:get",
    "pods:list",
    "pods:watch",
    "events:create",
    "events:patch",
];
const PULL_SECRETS_GRANTS: &[&str] = &["secrets:get", "serviceaccounts:get"];

#[test]
fn rbac_is_pods_read_and_events_write_only() {
    let docs = documents("deploy/rbac.yaml");
    assert_eq!(
        docs.iter().filter(|d| d["kind"] == "ClusterRole").count(),
        1
    );
    let grants = grants(&docs);
    assert_eq!(grants, set(BASE_GRANTS));
    assert!(
        !grants
            .iter()
            .any(|g| g.starts_with("secrets:") || g.starts_with("serviceaccounts:")),
        "the base reads no secrets: {grants:?}"
    );
}

#[test]
fn pull_secrets_component_grants_get_on_secrets_and_service_accounts_only() {
    const DIR: &str = "deploy/components/pull-secrets";
    let kustomization = documents(&format!("{DIR}/kustomization.yaml")).remove(0);
    assert_eq!(kustomization["kind"], "Component");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo().join(DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let docs: Vec<Value> = listed
        .iter()
        .flat_map(|file| documents(&format!("{DIR}/{file}")))
        .collect();
    assert_eq!(grants(&docs), set(PULL_SECRETS_GRANTS));
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    for rule in role["rules"].as_sequence().unwrap() {
        assert_eq!(rule["apiGroups"][0], "", "core API group only");
        assert!(rule["resourceNames"].is_null(), "any secret the pods name");
    }
    // Bound to the base's service account.
    let account = document("deploy/rbac.yaml", "ServiceAccount");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("a binding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        account["metadata"]["namespace"]
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = documents("deploy/kustomization.yaml").remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    for doc in listed
        .iter()
        .flat_map(|file| documents(&format!("deploy/{file}")))
    {
        let namespaced = !matches!(
            doc["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced {
            assert_eq!(
                doc["metadata"]["namespace"], "pullwatch",
                "{:?}",
                doc["metadata"]["name"]
            );
        }
    }
}

/// The flags the `agent` command accepts, from the binary's own help.
fn agent_flags() -> BTreeSet<String> {
    let help = testkit::cli::Pullwatch::new()
        .args(["agent", "--help"])
        .run();
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    help.stdout
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=' || c == '<')
        .filter(|word| word.starts_with("--"))
        .map(str::to_string)
        .collect()
}

/// Every optional component patches only the pullwatch DaemonSet, mounts host paths read-only
/// with a type that never creates anything on a node (`Directory` or `File`), and adds only
/// flags the agent has.
#[test]
fn components_never_create_host_paths_and_use_real_flags() {
    let flags = agent_flags();
    let dir = repo().join("deploy/components");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/components") {
        let name = entry
            .expect("an entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let path = format!("deploy/components/{name}/kustomization.yaml");
        let component = documents(&path).remove(0);
        assert_eq!(component["kind"], "Component", "{path}");
        for patch in component["patches"].as_sequence().into_iter().flatten() {
            assert_eq!(patch["target"]["kind"], "DaemonSet", "{path}");
            assert_eq!(patch["target"]["name"], "pullwatch", "{path}");
            let ops: Vec<Value> = serde_norway::from_str(patch["patch"].as_str().expect("inline"))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            for op in &ops {
                let value = &op["value"];
                if let Some(kind) = value["hostPath"]["type"].as_str() {
                    assert!(
                        matches!(kind, "Directory" | "File"),
                        "{path}: hostPath type {kind}"
                    );
                } else {
                    assert!(
                        value["hostPath"].is_null(),
                        "{path}: a hostPath without a type"
                    );
                }
                if value["mountPath"].is_string() {
                    assert_eq!(value["readOnly"], true, "{path}: {value:?}");
                }
                if op["path"].as_str().is_some_and(|p| p.ends_with("/args/-")) {
                    let arg = value.as_str().expect("an arg");
                    let flag = arg.split('=').next().unwrap_or(arg);
                    assert!(flags.contains(flag), "{path}: {flag} is not an agent flag");
                }
            }
        }
        seen += 1;
    }
    assert!(
        seen >= 3,
        "pull-secrets, credential-provider, kubelet-docker-config"
    );
}
