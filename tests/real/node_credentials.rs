//! The kubelet's own credentials against a real private registry (htpasswd) and a real containerd
//! holding an image pulled from it: without credentials the agent says "unverified", not "down";
//! with the kubelet's config.json under --kubelet-root-dir the manifest and the runtime's own pull
//! pass with them; wrong ones are a real failure. The password never leaves the process.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::agent::{Agent, sample, samples};
use testkit::containerd::Containerd;
use testkit::dns::DnsServer;
use testkit::registry::Registry;

const SETTLE: Duration = Duration::from_secs(30);
const USER: &str = "puller";
/// A canary: it must appear nowhere pullwatch writes.
const PASSWORD: &str = "canary-Pa55-7f3e9b";

/// A private registry, an image pushed there and pulled by containerd with the credentials the
/// kubelet would have handed it.
struct Node {
    registry: Registry,
    name: String,
    containerd: Containerd,
    dns: DnsServer,
    kubelet_dir: tempfile::TempDir,
}

fn node() -> Node {
    let registry = Registry::builder().htpasswd(USER, PASSWORD).start();
    let pushed = registry.push_image("team/private", "1.0");
    let name = format!("127.0.0.1:{}", registry.port());
    let containerd = Containerd::start();
    for reference in [
        format!("{name}/team/private:1.0"),
        format!("{name}/team/private@{}", pushed.digest),
    ] {
        containerd.pull_plain_http(&reference, Some(&format!("{USER}:{PASSWORD}")));
    }
    Node {
        registry,
        name,
        containerd,
        dns: DnsServer::builder().start(),
        kubelet_dir: tempfile::tempdir().expect("kubelet root dir"),
    }
}

impl Node {
    /// The kubelet's own config.json with `password` for the registry.
    fn kubelet_config(&self, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        let config = json!({ "auths": { &self.name: { "auth": auth } } });
        std::fs::write(
            self.kubelet_dir.path().join("config.json"),
            config.to_string(),
        )
        .expect("write config.json");
    }

    /// A credential provider plugin `ecr-login` (a shell script) answering with `password` for the
    /// registry, cached for an hour by registry; each run appends a line to `runs`.
    fn provider(&self, password: &str) -> Vec<String> {
        let response = json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "cacheDuration": "1h",
            "auth": { &self.name: { "username": USER, "password": password } }
        });
        self.plugin(&format!("echo '{response}'"))
    }

    /// The plugin `ecr-login` running `body` after reading its request and counting the run.
    fn plugin(&self, body: &str) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.kubelet_dir.path();
        let bin = dir.join("plugins");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let runs = dir.join("runs");
        let plugin = bin.join("ecr-login");
        std::fs::write(
            &plugin,
            format!(
                "#!/bin/sh\ncat >/dev/null\necho run >> {}\n{body}\n",
                runs.display()
            ),
        )
        .expect("write plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let config = dir.join("credential-provider.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: ecr-login\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages: [\"{}\"]\n    defaultCacheDuration: 10m\n",
                self.name
            ),
        )
        .expect("write config");
        vec![
            format!("--image-credential-provider-config={}", config.display()),
            format!("--image-credential-provider-bin-dir={}", bin.display()),
        ]
    }

    /// How many times the plugin ran.
    fn provider_runs(&self) -> usize {
        std::fs::read_to_string(self.kubelet_dir.path().join("runs"))
            .map(|text| text.lines().count())
            .unwrap_or_default()
    }

    fn agent(&self) -> Agent {
        self.agent_with(&[])
    }

    fn agent_with(&self, extra: &[String]) -> Agent {
        let endpoint = self.containerd.endpoint();
        let mut global: Vec<&str> = vec![
            "--resolv-conf",
            self.dns.resolv_conf_str(),
            "--timeout",
            "2s",
            "--runtime-endpoint",
            &endpoint,
            "--insecure-registry",
            &self.name,
            "--kubelet-root-dir",
            self.kubelet_dir.path().to_str().expect("UTF-8 path"),
        ];
        global.extend(extra.iter().map(String::as_str));
        // Debug logs too must hold no secret.
        Agent::start_with_env(
            &global,
            // Detail: the tests read the manifest check's own series, also when it passes.
            &[
                "--interval",
                "1s",
                "--manifest-interval",
                "1s",
                "--runtime-check-interval",
                "1s",
                "--metrics-detail",
            ],
            &[("PULLWATCH_LOG", "pullwatch=debug")],
        )
    }
}

fn registry_status<'a>(status: &'a Value, registry: &str) -> Option<&'a Value> {
    status["registries"]
        .as_array()?
        .iter()
        .find(|r| r["registry"] == registry)
}

/// Waits until the registry is down for `reason` (a real failure: `registry_up` 0), and returns
/// the metrics then.
fn wait_down(agent: &Agent, name: &str, reason: &str) -> String {
    let (metrics, _) =
        agent.wait_metrics(&format!("the registry down with {reason}"), SETTLE, |m| {
            sample(
            m,
            "pullwatch_endpoint_failure_reason",
            &[("registry", name), ("reason", reason)],
        ) == Some(1.0)
            // Both are set in one round, but a scrape may fall between them.
            && sample(m, "pullwatch_registry_up", &[("registry", name)]).is_some()
        });
    assert_eq!(
        sample(&metrics, "pullwatch_registry_up", &[("registry", name)]),
        Some(0.0),
        "{metrics}"
    );
    metrics
}

/// Nothing pullwatch wrote holds the password, plain or base64 (with or without the user).
fn assert_no_secret(agent: &Agent, metrics: &str, status: &str) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let forms = [
        PASSWORD.to_string(),
        b64(PASSWORD),
        b64(&format!("{USER}:{PASSWORD}")),
    ];
    let stderr = agent.stderr();
    for (what, text) in [
        ("stderr", stderr.as_str()),
        ("/metrics", metrics),
        ("status", status),
    ] {
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "{what} holds a secret ({form})"
            );
        }
    }
}

#[test]
fn without_credentials_a_private_registry_is_unverified_not_down() {
    let node = node();
    let agent = node.agent();
    let name = node.name.as_str();
    let (metrics, _) =
        agent.wait_metrics("the manifest checked without credentials", SETTLE, |m| {
            sample(
                m,
                "pullwatch_registry_credentials",
                &[("registry", name), ("source", "none")],
            ) == Some(1.0)
                // Both are set in one round, but a scrape may fall between them.
                && sample(m, "pullwatch_registry_up", &[("registry", name)]).is_some()
        });
    // The connection works and the refusal is no verdict: up, and no failure exported.
    assert_eq!(
        sample(&metrics, "pullwatch_registry_up", &[("registry", name)]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        samples(
            &metrics,
            "pullwatch_endpoint_failure_reason",
            &[("registry", name)]
        )
        .is_empty(),
        "{metrics}"
    );
    let (_, body) = agent.get("/api/v1/status");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    let ours = registry_status(&status, name).expect("the registry in the status");
    let note = ours["unverified"].as_str().unwrap_or_default();
    let looked = node.kubelet_dir.path().join("config.json");
    assert!(
        note.starts_with("unverified: no credentials (looked in ")
            && note.contains(&looked.display().to_string()),
        "{ours}"
    );
    // Without credentials the runtime's own pull would be refused just the same: not run.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = agent.metrics();
    assert!(
        sample(
            &metrics,
            "pullwatch_runtime_check_success",
            &[("registry", name)]
        )
        .is_none(),
        "{metrics}"
    );
    assert_no_secret(&agent, &metrics, &body);
    drop(node.registry);
}

#[test]
fn the_kubelets_config_json_verifies_the_manifest_and_the_runtimes_pull() {
    let node = node();
    node.kubelet_config(PASSWORD);
    let agent = node.agent();
    let name = node.name.as_str();
    let (metrics, _) = agent.wait_metrics("the runtime check with credentials", SETTLE, |m| {
        sample(m, "pullwatch_runtime_check_success", &[("registry", name)]).is_some()
            && sample(
                m,
                "pullwatch_check_success",
                &[("registry", name), ("check", "manifest")],
            )
            .is_some()
    });
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_registry_credentials",
            &[("registry", name), ("source", "docker_config")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_check_success",
            &[("registry", name), ("check", "manifest")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // The runtime pulled its canary with the credentials the registry accepted.
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_runtime_check_success",
            &[("registry", name)]
        ),
        Some(1.0),
        "{metrics}\ncontainerd log:\n{}",
        node.containerd.log()
    );
    let (_, body) = agent.get("/api/v1/status");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    let ours = registry_status(&status, name).expect("the registry in the status");
    assert!(ours.get("unverified").is_none(), "{ours}");
    // The agent's own API (gRPC over its socket) holds no secret either.
    let asked = testkit::cli::Pullwatch::new()
        .args([
            "diagnose",
            "--output",
            "json",
            "--agent",
            &agent.socket_url(),
        ])
        .arg(format!("{name}/team/private:1.0"))
        .run();
    assert_eq!(asked.code, Some(0), "{}\n{}", asked.stdout, asked.stderr);
    for text in [&asked.stdout, &asked.stderr] {
        assert!(!text.contains(PASSWORD), "the API leaked the password");
    }
    let manifest = ours["endpoints"][0]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == "manifest"))
        .expect("a manifest check");
    let config = node.kubelet_dir.path().join("config.json");
    assert!(
        manifest["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with(&format!(
                "(credentials: docker config {})",
                config.display()
            ))),
        "{manifest}"
    );
    assert_no_secret(&agent, &metrics, &body);
}

#[test]
fn wrong_credentials_are_a_real_failure() {
    let node = node();
    node.kubelet_config("not-the-password");
    let agent = node.agent();
    let name = node.name.as_str();
    let metrics = wait_down(&agent, name, "auth_failed");
    let (_, body) = agent.get("/api/v1/status");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    let ours = registry_status(&status, name).expect("the registry in the status");
    assert!(ours.get("unverified").is_none(), "{ours}");
    assert_no_secret(&agent, &metrics, &body);
    assert!(Path::new(&node.kubelet_dir.path().join("config.json")).exists());
}

#[test]
fn a_credential_provider_verifies_the_registry_and_runs_once_per_cache_period() {
    let node = node();
    let flags = node.provider(PASSWORD);
    let agent = node.agent_with(&flags);
    let name = node.name.as_str();
    let (metrics, _) = agent.wait_metrics(
        "the runtime check with the provider's credentials",
        SETTLE,
        |m| sample(m, "pullwatch_runtime_check_success", &[("registry", name)]).is_some(),
    );
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_registry_credentials",
            &[("registry", name), ("source", "credential_provider")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "pullwatch_runtime_check_success",
            &[("registry", name)]
        ),
        Some(1.0),
        "{metrics}\ncontainerd log:\n{}",
        node.containerd.log()
    );
    // Manifest rounds every second; the answer is cached for an hour by registry.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        node.provider_runs(),
        1,
        "the plugin ran again within its cache period"
    );
    let (_, body) = agent.get("/api/v1/status");
    assert!(
        body.contains("(credentials: credential provider ecr-login)"),
        "{body}"
    );
    assert_no_secret(&agent, &agent.metrics(), &body);
}

#[test]
fn a_failing_provider_is_credentials_unavailable_with_its_stderr() {
    let node = node();
    let flags =
        node.plugin("echo 'AccessDeniedException: no ecr:GetAuthorizationToken' >&2\nexit 1");
    let agent = node.agent_with(&flags);
    let name = node.name.as_str();
    // A source the kubelet uses is broken: the node cannot pull either; a real failure.
    wait_down(&agent, name, "credentials_unavailable");
    let (_, body) = agent.get("/api/v1/status");
    assert!(
        body.contains("credential provider ecr-login failed")
            && body.contains("AccessDeniedException"),
        "{body}"
    );
}

#[test]
fn a_providers_refused_credentials_are_auth_failed_naming_it() {
    let node = node();
    let flags = node.provider("not-the-password");
    let agent = node.agent_with(&flags);
    let name = node.name.as_str();
    wait_down(&agent, name, "auth_failed");
    let (_, body) = agent.get("/api/v1/status");
    assert!(
        body.contains("(credentials: credential provider ecr-login)"),
        "{body}"
    );
}
