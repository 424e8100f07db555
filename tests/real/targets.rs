//! `pullwatch targets` against the real containerd: the registries of its images, of the config
//! files and of `--registry`, each route checked against the files it was read from.

use std::path::Path;
use std::time::Duration;

use pullwatch::runtime::RuntimeClient;
use serde_json::{Value, json};
use testkit::cli::{Pullwatch, parse_json_lines};
use testkit::containerd::Containerd;
use testkit::registry::Registry;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
    std::fs::write(path, text).expect("write config file");
}

fn by_registry<'a>(targets: &'a [Value], registry: &str) -> &'a Value {
    targets
        .iter()
        .find(|t| t["registry"] == registry)
        .unwrap_or_else(|| panic!("{registry} not listed: {targets:?}"))
}

#[test]
fn targets_lists_registries_and_routes_with_their_sources() {
    let registry = Registry::start();
    registry.push_image("pause", "3.9");
    let pause = format!("{}/pause:3.9", registry.addr());
    let ctrd = Containerd::builder().sandbox_image(&pause).start();
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(async {
            RuntimeClient::new(ctrd.socket(), Duration::from_secs(10))
                .pull_image(&pause, None, Duration::from_secs(60))
                .await
        })
        .expect("the node holds its sandbox image");

    let certs = ctrd.certs_dir();
    let hub_file = certs.join("docker.io/hosts.toml");
    write(
        &hub_file,
        "server = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.example:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.pem\"\n",
    );
    let local = registry.addr().to_string();
    write(&certs.join(&local).join("ca.crt"), "a Docker-style CA file");
    // containerd's other spelling of a port, and a mirror with its own API root.
    let escaped_dir = certs.join("mirror.test_5000_");
    write(
        &escaped_dir.join("hosts.toml"),
        "[host.\"https://harbor.example/v2/dockerhub\"]\n  override_path = true\n",
    );
    let broken_file = certs.join("broken.example/hosts.toml");
    write(
        &broken_file,
        "[host.\"https://m.example\"]\n  capabilities = [\"pull\", \"teleport\"]\n",
    );
    let conf = ctrd.scratch_dir().join("registries.conf");
    write(
        &conf,
        "[[registry]]\nlocation = \"quay.io\"\n\n[[registry.mirror]]\nlocation = \"quay-mirror.example\"\n",
    );
    let flags = |endpoint: String| {
        vec![
            "--runtime-endpoint".to_string(),
            endpoint,
            "--containerd-certs-dir".to_string(),
            ctrd.certs_dir_str().to_string(),
            "--registries-conf".to_string(),
            conf.display().to_string(),
            "targets".to_string(),
            "--registry".to_string(),
            "ghcr.io".to_string(),
        ]
    };

    let out = Pullwatch::new()
        .args(flags(ctrd.endpoint()))
        .args(["--output", "json"])
        .run();
    assert_eq!(out.exit_code(), 0, "{}", out.stderr);
    let targets = parse_json_lines(&out);
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["registry"].as_str().unwrap_or_default())
        .collect();
    // The runtime is containerd: CRI-O's registries.conf does not apply.
    assert_eq!(
        names,
        [
            local.as_str(),
            "broken.example",
            "docker.io",
            "ghcr.io",
            "mirror.test:5000"
        ]
    );
    for target in &targets {
        assert!(
            target["runtime"]
                .as_str()
                .unwrap_or_default()
                .starts_with("containerd 1.6"),
            "{target}"
        );
    }

    let hub = by_registry(&targets, "docker.io");
    assert_eq!(
        hub["sources"],
        json!([certs.join("docker.io").display().to_string()])
    );
    assert_eq!(hub["config"], "containerd");
    let hub_source = hub_file.display().to_string();
    assert_eq!(
        hub["endpoints"],
        json!([
            {
                "endpoint": "https://mirror.example:5000",
                "role": "mirror",
                "source": format!("{hub_source}:3"),
                "capabilities": ["pull", "resolve"],
                "path": "/v2",
                "ca_files": [certs.join("docker.io/ca.pem").display().to_string()],
                "skip_verify": false,
            },
            {
                "endpoint": "https://registry-1.docker.io",
                "role": "upstream",
                "source": format!("{hub_source}:1"),
                "capabilities": ["pull", "resolve", "push"],
                "path": "/v2",
                "skip_verify": false,
            },
        ])
    );

    // Held by the runtime and configured by a Docker-style directory; containerd talks plain
    // HTTP to a localhost registry, without verifying.
    let held = by_registry(&targets, &local);
    let local_dir = certs.join(&local).display().to_string();
    assert_eq!(held["sources"], json!(["runtime images (1)", local_dir]));
    assert_eq!(held["endpoints"][0]["endpoint"], format!("http://{local}"));
    assert_eq!(held["endpoints"][0]["source"], local_dir);
    assert_eq!(
        held["endpoints"][0]["ca_files"],
        json!([certs.join(&local).join("ca.crt").display().to_string()])
    );
    assert_eq!(held["endpoints"][0]["skip_verify"], true);
    assert_eq!(held["endpoints"][0]["path"], "/v2");

    let escaped = by_registry(&targets, "mirror.test:5000");
    assert_eq!(
        escaped["sources"],
        json!([escaped_dir.display().to_string()])
    );
    assert_eq!(
        escaped["endpoints"][0]["endpoint"],
        "https://harbor.example"
    );
    assert_eq!(escaped["endpoints"][0]["path"], "/v2/dockerhub");
    assert_eq!(
        escaped["endpoints"][1]["endpoint"],
        "https://mirror.test:5000"
    );
    assert_eq!(escaped["endpoints"][1]["path"], "/v2");

    let broken = by_registry(&targets, "broken.example");
    assert_eq!(
        broken["problems"],
        json!([format!(
            "{}:2: unknown capability \"teleport\"; containerd ignores this file",
            broken_file.display()
        )])
    );
    assert_eq!(broken["endpoints"][0]["endpoint"], "https://broken.example");

    let flagged = by_registry(&targets, "ghcr.io");
    assert_eq!(flagged["sources"], json!(["--registry"]));
    assert_eq!(flagged["config"], "containerd");
    assert_eq!(flagged["endpoints"][0]["source"], "default");

    // The rules of the containerd that answered on the socket, at its version.
    let rules = flagged["rules"].as_str().unwrap_or_default().to_string();
    assert!(rules.starts_with("containerd 1."), "{rules}");

    // For people: a block per registry, a line per endpoint, the problem marked.
    let out = Pullwatch::new().args(flags(ctrd.endpoint())).run();
    assert_eq!(out.exit_code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "docker.io  (from {}; route: containerd; rules: {rules})\n  1. https://mirror.example:5000  mirror  {hub_source}:3  [pull,resolve]  ca {}\n  2. https://registry-1.docker.io  upstream  {hub_source}:1  [pull,resolve,push]\n",
            certs.join("docker.io").display(),
            certs.join("docker.io/ca.pem").display()
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "  ! {}:2: unknown capability",
            broken_file.display()
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("https://harbor.example  mirror")
            && out.stdout.contains("  path /v2/dockerhub"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("path \n"), "{}", out.stdout);

    // Without an answering runtime it is not known whose config applies: both are read.
    let dead = format!("unix://{}", ctrd.scratch_dir().join("dead.sock").display());
    let out = Pullwatch::new()
        .args(flags(dead))
        .args(["--output", "json"])
        .run();
    assert_eq!(out.exit_code(), 0, "{}", out.stderr);
    assert!(out.stderr.contains("does not answer"), "{}", out.stderr);
    let targets = parse_json_lines(&out);
    let quay = by_registry(&targets, "quay.io");
    assert_eq!(quay["sources"], json!([conf.display().to_string()]));
    assert_eq!(quay["config"], "cri-o");
    assert_eq!(
        quay["endpoints"][0]["endpoint"],
        "https://quay-mirror.example"
    );
    assert_eq!(
        quay["endpoints"][0]["source"],
        format!("{}:4", conf.display())
    );
    assert_eq!(quay["endpoints"][1]["endpoint"], "https://quay.io");
    assert!(
        targets.iter().all(|t| t.get("runtime").is_none()),
        "{targets:?}"
    );
    // No runtime images without a runtime.
    assert_eq!(
        by_registry(&targets, &local)["sources"],
        json!([certs.join(&local).display().to_string()])
    );
}

/// Without a CRI socket, `--runtime-version` names the runtime whose rules apply, and `targets`
/// says which: a hosts.toml with only `server` is ignored by containerd 1.6 (it wants a `[host]`
/// table) and used by 2.0. A value that names no runtime with rules is one line, exit 2.
#[test]
fn runtime_version_picks_the_rules_without_a_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs.d");
    write(
        &certs.join("r.example/hosts.toml"),
        "server = \"https://mirror.example\"\n",
    );
    // `targets --output json` for one registry, under one runtime version's rules.
    let listed = |version: &str, registry: &str| -> Value {
        let out = Pullwatch::new()
            .args([
                "--runtime-endpoint",
                "unix:///nonexistent/pullwatch-test.sock",
                "--containerd-certs-dir",
                certs.to_str().expect("UTF-8 path"),
                "--runtime-version",
                version,
                "targets",
                "--output",
                "json",
                "--registry",
                registry,
            ])
            .run();
        by_registry(&parse_json_lines(&out), registry).clone()
    };
    let field =
        |endpoint: &Value, name: &str| endpoint[name].as_str().unwrap_or_default().to_string();
    let endpoints_under = |version: &str| -> (String, Vec<String>) {
        let ours = listed(version, "r.example");
        let urls = ours["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| field(e, "endpoint"))
            .collect();
        (field(&ours, "rules"), urls)
    };
    assert_eq!(
        endpoints_under("containerd/1.6.20"),
        (
            "containerd 1.6.20".to_string(),
            vec!["https://r.example".to_string()]
        )
    );
    assert_eq!(
        endpoints_under("containerd/2.0.1"),
        (
            "containerd 2.0.1".to_string(),
            vec!["https://mirror.example".to_string()]
        )
    );
    // A registry on a loopback port, no hosts.toml: plain HTTP up to 1.6.24, HTTPS first (without
    // verification) then plain HTTP on the same port from 1.6.25 on: one endpoint, its fallback
    // named.
    let local_under = |version: &str| -> Vec<(String, String, String)> {
        listed(version, "127.0.0.1:5000")["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                (
                    field(e, "endpoint"),
                    field(e, "source"),
                    field(e, "http_fallback"),
                )
            })
            .collect()
    };
    assert_eq!(
        local_under("containerd/1.6.20"),
        [(
            "http://127.0.0.1:5000".to_string(),
            "default".to_string(),
            String::new()
        )]
    );
    assert_eq!(
        local_under("containerd/2.0.1"),
        [(
            "https://127.0.0.1:5000".to_string(),
            "default".to_string(),
            "HTTP on port 5000 when the server answers plain HTTP or the TLS handshake times out"
                .to_string()
        )]
    );
    let bad = Pullwatch::new()
        .args(["--runtime-version", "podman/5.0", "targets"])
        .run();
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("containerd and cri-o"),
        "{}",
        bad.stderr
    );
}
