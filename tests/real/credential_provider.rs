//! Credential provider plugins run for real: small `/bin/sh` plugins in a temporary bin dir,
//! driven through `pullwatch::credentials::provider::Providers` as the agent will drive it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pullwatch::credentials::provider::{ProviderAnswer, Providers};

const SECRET: &str = "hunter2-provider-secret";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary node: a bin dir for plugins, a config file and a place for plugins to write.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        std::fs::create_dir(dir.path().join("out")).expect("out dir");
        Node { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("credential-provider.yaml")
    }

    /// Writes an executable plugin `name` whose body is `script` (`OUT` replaced by the out dir).
    fn plugin(&self, name: &str, script: &str) {
        let path = self.bin().join(name);
        let out = self.dir.path().join("out");
        let text = format!(
            "#!/bin/sh\n{}",
            script.replace("OUT", &out.display().to_string())
        );
        std::fs::write(&path, text).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Writes the config with these `providers:` items (YAML, indented by two).
    fn config(&self, providers: &str) {
        let text = format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n{providers}"
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn load(&self) -> Providers {
        Providers::load(&self.config_path(), &self.bin()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn load_error(&self) -> String {
        Providers::load(&self.config_path(), &self.bin())
            .map(|p| format!("loaded: {p:?}"))
            .expect_err("load should fail")
            .to_string()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.out(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A provider entry named `name` for `patterns`.
fn provider(name: &str, patterns: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    matchImages: {patterns}\n    defaultCacheDuration: 1h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n{extra}"
    )
}

/// A response giving `alice`/SECRET for `key`, cached by `kind` (for `duration`, when given).
fn response(key: &str, kind: &str, duration: Option<&str>) -> String {
    let duration = duration
        .map(|d| format!(",\"cacheDuration\":\"{d}\""))
        .unwrap_or_default();
    format!(
        r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"{kind}"{duration},"auth":{{"{key}":{{"username":"alice","password":"{SECRET}"}}}}}}"#
    )
}

/// Nothing of the answer, printed, shows the password.
fn assert_no_secret(answer: &ProviderAnswer) {
    let printed = format!("{answer:?}");
    assert!(!printed.contains(SECRET), "{printed}");
    for failure in &answer.failures {
        assert!(!failure.message.contains(SECRET), "{}", failure.message);
    }
}

#[tokio::test]
async fn credential_provider_gives_credentials_for_matching_images_only() {
    let node = Node::new();
    node.plugin(
        "acme",
        &format!(
            "cat >> OUT/requests\necho >> OUT/requests\ncat <<'EOF'\n{}\nEOF\n",
            response("*.registry.test", "Image", None)
        ),
    );
    node.config(&provider("acme", "[\"*.registry.test\"]", ""));
    let providers = node.load();

    let answer = providers
        .lookup("eu.registry.test/team/app:1.0", TIMEOUT)
        .await;
    assert!(answer.failures.is_empty(), "{:?}", answer.failures);
    assert_eq!(answer.found.len(), 1, "{answer:?}");
    let found = &answer.found[0];
    assert_eq!(found.provider, "acme");
    assert_eq!(found.credential.username, "alice");
    assert_eq!(found.credential.password.expose(), SECRET);
    assert_eq!(found.credential.key, "*.registry.test");
    assert_no_secret(&answer);

    // The plugin was asked as the kubelet asks: the repository without tag, on stdin.
    let requests = node.lines("requests");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request: serde_json::Value = serde_json::from_str(&requests[0]).expect("request JSON");
    assert_eq!(
        request,
        serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": "eu.registry.test/team/app",
        })
    );

    // Not matching: `*.registry.test` is one label, never the bare domain nor two labels.
    for image in [
        "registry.test/app",
        "a.b.registry.test/app",
        "eu.registry.test:5000/app",
        "nginx",
    ] {
        let answer = providers.lookup(image, TIMEOUT).await;
        assert!(
            answer.found.is_empty() && answer.failures.is_empty(),
            "{image}: {answer:?}"
        );
    }
    assert_eq!(providers.runs(), 1, "non-matching images run no plugin");
}

#[tokio::test]
async fn credential_provider_args_and_env_reach_the_plugin() {
    let node = Node::new();
    node.plugin(
        "acme",
        &format!(
            "cat > /dev/null\necho \"$*\" > OUT/args\necho \"$PW_PROVIDER_ENV\" > OUT/env\necho \"$PATH\" > OUT/path\ncat <<'EOF'\n{}\nEOF\n",
            response("registry.test", "Image", None)
        ),
    );
    node.config(&provider(
        "acme",
        "[\"registry.test\"]",
        "    args: [get-credentials, --region, eu west]\n    env:\n      - name: PW_PROVIDER_ENV\n        value: from-config\n",
    ));
    let providers = node.load();
    let answer = providers.lookup("registry.test/app", TIMEOUT).await;
    assert_eq!(answer.found.len(), 1, "{answer:?}");
    assert_eq!(node.lines("args"), ["get-credentials --region eu west"]);
    assert_eq!(node.lines("env"), ["from-config"]);
    // The rest of the environment is pullwatch's own, as the kubelet passes its own.
    assert_eq!(
        node.lines("path"),
        [std::env::var("PATH").unwrap_or_default()]
    );
}

#[tokio::test]
async fn credential_provider_failure_carries_stderr_never_stdout() {
    let node = Node::new();
    node.plugin(
        "acme",
        &format!(
            "cat > /dev/null\nprintf 'no credentials for registry.test\\n\\033[31mdenied\\033[0m\\n' >&2\ncat <<'EOF'\n{}\nEOF\nexit 1\n",
            response("registry.test", "Image", None)
        ),
    );
    node.config(&provider("acme", "[\"registry.test\"]", ""));
    let providers = node.load();
    let answer = providers.lookup("registry.test/app", TIMEOUT).await;
    assert!(answer.found.is_empty(), "{answer:?}");
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    let failure = &answer.failures[0];
    assert_eq!(failure.provider, "acme");
    assert!(failure.message.contains("\"acme\""), "{}", failure.message);
    assert!(
        failure.message.contains("exited with status 1"),
        "{}",
        failure.message
    );
    assert!(
        failure
            .message
            .contains("stderr: \"no credentials for registry.test [31mdenied [0m\""),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains('\u{1b}'), "{}", failure.message);
    assert_no_secret(&answer);
}

#[tokio::test]
async fn credential_provider_timeout_kills_the_plugin_and_its_children() {
    let node = Node::new();
    node.plugin(
        "slow",
        "echo $$ > OUT/pid\nsleep 30 &\necho $! > OUT/grandchild\necho 'waiting for the cloud' >&2\nwait\n",
    );
    node.config(&provider("slow", "[\"registry.test\"]", ""));
    let providers = node.load();
    let started = Instant::now();
    // 3 s: enough for the plugin to start and speak on a loaded machine, far below its 30 s.
    let answer = providers
        .lookup("registry.test/app", Duration::from_secs(3))
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    let message = &answer.failures[0].message;
    assert!(message.contains("did not answer within "), "{message}");
    assert!(message.contains("waiting for the cloud"), "{message}");

    let pid = node.lines("pid").first().cloned().expect("plugin pid");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "plugin {pid} killed and reaped"
    );
    let grandchild = node
        .lines("grandchild")
        .first()
        .cloned()
        .expect("child pid");
    let gone = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let until = Instant::now() + Duration::from_secs(3);
    while !gone(&grandchild) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gone(&grandchild),
        "the plugin's child {grandchild} was killed with its group"
    );
}

#[tokio::test]
async fn credential_provider_garbage_or_oversized_stdout_fails() {
    struct Case {
        input: &'static str,
        want: &'static str,
    }
    let cases = [
        Case {
            input: "cat > /dev/null\necho 'hunter2-provider-secret is not json'\n",
            want: "stdout is not a JSON response",
        },
        Case {
            input: "cat > /dev/null\nyes hunter2-provider-secret\n",
            want: "wrote more than 1048576 bytes on stdout",
        },
        Case {
            input: "cat > /dev/null\necho '{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1beta1\",\"kind\":\"CredentialProviderResponse\",\"cacheKeyType\":\"Image\"}'\n",
            want: "response apiVersion is \"credentialprovider.kubelet.k8s.io/v1beta1\", expected credentialprovider.kubelet.k8s.io/v1",
        },
        Case {
            input: "cat > /dev/null\necho '{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"Secret\",\"cacheKeyType\":\"Image\"}'\n",
            want: "response kind is \"Secret\"",
        },
        Case {
            input: "cat > /dev/null\necho '{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"CredentialProviderResponse\",\"cacheKeyType\":\"Node\"}'\n",
            want: "cacheKeyType is not Image, Registry or Global",
        },
    ];
    for case in cases {
        let node = Node::new();
        node.plugin("acme", case.input);
        node.config(&provider("acme", "[\"registry.test\"]", ""));
        let providers = node.load();
        let started = Instant::now();
        let answer = providers.lookup("registry.test/app", TIMEOUT).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{}", case.want);
        assert_eq!(answer.failures.len(), 1, "{}: {answer:?}", case.input);
        let message = &answer.failures[0].message;
        assert!(message.contains(case.want), "{}\n→ {message}", case.input);
        assert_no_secret(&answer);
    }
}

#[tokio::test]
async fn credential_provider_answers_are_cached_by_cache_key_type() {
    struct Case {
        input: (&'static str, Option<&'static str>, &'static str),
        /// `runs()` after looking up r.test/a, r.test/a, r.test/b, other.test/c.
        want: [u64; 4],
    }
    let cases = [
        Case {
            input: ("Image", None, "1h"),
            want: [1, 1, 2, 3],
        },
        Case {
            input: ("Registry", None, "1h"),
            want: [1, 1, 1, 2],
        },
        Case {
            input: ("Global", None, "1h"),
            want: [1, 1, 1, 1],
        },
        Case {
            input: ("Global", Some("0s"), "1h"),
            want: [1, 2, 3, 4],
        },
        Case {
            input: ("Global", None, "0s"),
            want: [1, 2, 3, 4],
        },
        Case {
            input: ("Global", Some("1h"), "0s"),
            want: [1, 1, 1, 1],
        },
    ];
    for case in cases {
        let (kind, duration, default) = case.input;
        let node = Node::new();
        node.plugin(
            "cached",
            &format!(
                "cat > /dev/null\necho run >> OUT/runs\ncat <<'EOF'\n{}\nEOF\n",
                response("*.test", kind, duration)
            ),
        );
        node.config(&provider("cached", "[\"*.test\"]", "").replace(
            "defaultCacheDuration: 1h",
            &format!("defaultCacheDuration: {default}"),
        ));
        let providers = node.load();
        let mut got = [0; 4];
        for (i, image) in ["r.test/a", "r.test/a", "r.test/b", "other.test/c"]
            .iter()
            .enumerate()
        {
            let answer = providers.lookup(image, TIMEOUT).await;
            assert_eq!(answer.found.len(), 1, "{image}: {answer:?}");
            assert_eq!(answer.found[0].credential.password.expose(), SECRET);
            got[i] = providers.runs();
        }
        assert_eq!(got, case.want, "{:?}", case.input);
        assert_eq!(
            node.lines("runs").len() as u64,
            case.want[3],
            "{:?}",
            case.input
        );
    }
}

#[tokio::test]
async fn credential_provider_several_providers_are_all_asked_and_merged() {
    let node = Node::new();
    node.plugin(
        "first",
        &format!(
            "cat > /dev/null\ncat <<'EOF'\n{}\nEOF\n",
            response("registry.test", "Image", None)
        ),
    );
    node.plugin(
        "second",
        &format!(
            "cat > /dev/null\ncat <<'EOF'\n{}\nEOF\n",
            response("registry.test/team", "Image", None).replace("alice", "bob")
        ),
    );
    node.plugin("broken", "exit 3\n");
    node.config(&format!(
        "{}{}{}",
        provider("first", "[\"registry.test\"]", ""),
        provider("broken", "[\"registry.test\"]", ""),
        provider("second", "[\"registry.test/team\"]", "")
    ));
    let providers = node.load();
    let answer = providers.lookup("registry.test/team/app", TIMEOUT).await;
    let found: Vec<(&str, &str)> = answer
        .found
        .iter()
        .map(|f| (f.provider.as_str(), f.credential.username.as_str()))
        .collect();
    // The more specific key first, whichever provider gave it; the broken one reported.
    assert_eq!(found, [("second", "bob"), ("first", "alice")]);
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    assert_eq!(answer.failures[0].provider, "broken");
    assert!(answer.failures[0].message.contains("exited with status 3"));
    assert_eq!(providers.runs(), 3);
}

#[tokio::test]
async fn credential_provider_refuses_bad_names_and_plugins_at_load() {
    struct Case {
        input: &'static str,
        want: &'static str,
    }
    let cases = [
        Case {
            input: "../evil",
            want: "providers[0].name: cannot contain '/'",
        },
        Case {
            input: "/bin/sh",
            want: "providers[0].name: cannot contain '/'",
        },
        Case {
            input: "\"..\"",
            want: "providers[0].name: cannot be '.' or '..'",
        },
    ];
    for case in cases {
        let node = Node::new();
        node.config(&provider(case.input, "[\"registry.test\"]", ""));
        let error = node.load_error();
        let want_start = format!(
            "--image-credential-provider-config {}: ",
            node.config_path().display()
        );
        assert!(error.starts_with(&want_start), "{error}");
        assert!(error.contains(case.want), "{error}");
    }

    let node = Node::new();
    node.config(&provider("absent", "[\"registry.test\"]", ""));
    let error = node.load_error();
    let bin = node.bin().display().to_string();
    assert!(
        error.starts_with(&format!(
            "--image-credential-provider-bin-dir {bin}: plugin {bin}/absent does not exist"
        )),
        "{error}"
    );

    node.plugin("absent", "exit 0\n");
    std::fs::set_permissions(
        node.bin().join("absent"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let error = node.load_error();
    assert!(error.contains("is not executable"), "{error}");

    std::fs::remove_file(node.bin().join("absent")).expect("rm");
    std::os::unix::fs::symlink("/bin/sh", node.bin().join("absent")).expect("symlink");
    let error = node.load_error();
    assert!(error.contains("outside"), "{error}");

    let error = Providers::load(&node.config_path(), Path::new("/nonexistent/bin"))
        .expect_err("no bin dir")
        .to_string();
    assert_eq!(
        error,
        "--image-credential-provider-bin-dir /nonexistent/bin: does not exist"
    );
}

#[tokio::test]
async fn credential_provider_removed_after_load_fails_at_lookup() {
    let node = Node::new();
    node.plugin("acme", "exit 0\n");
    node.config(&provider("acme", "[\"registry.test\"]", ""));
    let providers = node.load();
    std::fs::remove_file(node.bin().join("acme")).expect("rm");
    let answer = providers.lookup("registry.test/app", TIMEOUT).await;
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    assert!(
        answer.failures[0].message.contains("does not exist"),
        "{answer:?}"
    );
    assert_eq!(providers.runs(), 0);

    // Put back, but not executable: refused without running it.
    node.plugin("acme", "exit 0\n");
    std::fs::set_permissions(
        node.bin().join("acme"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let answer = providers.lookup("registry.test/app", TIMEOUT).await;
    assert!(
        answer.failures[0].message.contains("is not executable"),
        "{answer:?}"
    );
    assert_eq!(providers.runs(), 0);
}

/// A config the kubelet would refuse is refused by the binary with one line naming the file and
/// the field: exit 2 for `diagnose` (a usage error), 64 for the agent (bad config).
#[test]
fn a_bad_config_is_one_line_and_the_documented_exit_code() {
    let node = Node::new();
    node.config("  - name: ecr-login\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages: [\"*.dkr.ecr.*.amazonaws.com\"]\n");
    let config = node.config_path().display().to_string();
    let bin = node.bin().display().to_string();
    let flags = [
        "--image-credential-provider-config".to_string(),
        config.clone(),
        "--image-credential-provider-bin-dir".to_string(),
        bin,
    ];
    let want = format!(
        "--image-credential-provider-config {config}: providers[0].defaultCacheDuration: required"
    );
    let diagnose = testkit::cli::Pullwatch::new()
        .args(flags.iter().cloned())
        .args(["diagnose", "nginx"])
        .run();
    assert_eq!(diagnose.code, Some(2), "{}", diagnose.stderr);
    assert_eq!(
        diagnose.stderr.trim().lines().count(),
        1,
        "{}",
        diagnose.stderr
    );
    assert!(diagnose.stderr.contains(&want), "{}", diagnose.stderr);
    let agent = testkit::cli::Pullwatch::new()
        .args(flags.iter().cloned())
        .args(["agent", "--kubernetes", "off", "--listen", "127.0.0.1:0"])
        .run();
    assert_eq!(agent.code, Some(64), "{}", agent.stderr);
    assert!(agent.stderr.contains(&want), "{}", agent.stderr);
}
