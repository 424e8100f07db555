//! `agent --pull-secrets` end to end: a pod failing to pull from a real private registry
//! (htpasswd) through the fake API server. Its own pull secret is read (a GET, nothing else) and
//! tried first, as the kubelet does; the diagnosis and the Event name it; a secret the registry
//! refuses is `auth_failed`, a missing one `credentials_unavailable`, each naming it; without the
//! flag no secret is read. The password appears nowhere.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::agent::{Agent, NODE};
use testkit::dns::DnsServer;
use testkit::kube_api::{KubeApi, pod, secret};
use testkit::registry::Registry;

const SETTLE: Duration = Duration::from_secs(30);
const USER: &str = "puller";
const PASSWORD: &str = "canary-Secret-4b1d7e";
const DOCKER_JSON: &str = "kubernetes.io/dockerconfigjson";

struct World {
    registry: Registry,
    image: String,
    dns: DnsServer,
    api: KubeApi,
}

fn world() -> World {
    let registry = Registry::builder().htpasswd(USER, PASSWORD).start();
    registry.push_image("team/private", "1.0");
    let image = format!("127.0.0.1:{}/team/private:1.0", registry.port());
    World {
        registry,
        image,
        dns: DnsServer::builder().start(),
        api: KubeApi::start(NODE),
    }
}

impl World {
    /// A `.dockerconfigjson` secret `shop/<name>` for the registry with `password`.
    fn add_secret(&self, name: &str, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        let config =
            json!({"auths": {format!("127.0.0.1:{}", self.registry.port()): {"auth": auth}}});
        self.api.add_secret(secret(
            "shop",
            name,
            DOCKER_JSON,
            &[(".dockerconfigjson", config.to_string().as_bytes())],
        ));
    }

    /// Pod `shop/web` failing to pull the image with the kubelet's 401 text, naming `secrets`.
    fn failing_pod(&self, secrets: &[&str]) {
        let message = format!(
            "failed to pull and unpack image \"{}\": failed to resolve reference \"{}\": pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials",
            self.image, self.image
        );
        self.api.apply_pod(
            pod("shop", "web", "uid-web", NODE)
                .pull_secrets(secrets)
                .waiting("app", &self.image, "ErrImagePull", &message)
                .build(),
        );
    }

    fn agent(&self, pull_secrets: bool) -> Agent {
        let name = format!("127.0.0.1:{}", self.registry.port());
        let mut flags = vec!["--kubernetes", "on", "--interval", "60s"];
        if pull_secrets {
            flags.push("--pull-secrets");
        }
        Agent::start_with_env(
            &[
                "--resolv-conf",
                self.dns.resolv_conf_str(),
                "--timeout",
                "2s",
                "--insecure-registry",
                &name,
            ],
            &flags,
            &[("KUBECONFIG", self.api.kubeconfig_str())],
        )
    }

    /// The note of the first Event about `shop/web`, once there is one.
    fn event_note(&self) -> String {
        self.api.wait("the diagnosis Event", SETTLE, |api| {
            api.events().iter().any(|e| e["regarding"]["name"] == "web")
        });
        let events = self.api.events();
        let event = events
            .iter()
            .find(|e| e["regarding"]["name"] == "web")
            .expect("an Event");
        event["note"].as_str().unwrap_or_default().to_string()
    }

    /// The secret GETs the API server saw, and anything else touching secrets.
    fn secret_requests(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.target.contains("/secrets") || r.target.contains("/serviceaccounts"))
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }
}

/// The diagnosis of the failing pod in the agent's status.
fn diagnosis(agent: &Agent) -> Value {
    let (_, body) = agent.get("/api/v1/status");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    status["failures"][0]["diagnosis"].clone()
}

fn assert_no_secret(world: &World, agent: &Agent) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let everything = format!(
        "{}\n{}\n{}\n{:?}",
        agent.stderr(),
        agent.metrics(),
        agent.get("/api/v1/status").1,
        world.api.events()
    );
    for form in [
        PASSWORD.to_string(),
        b64(PASSWORD),
        b64(&format!("{USER}:{PASSWORD}")),
    ] {
        assert!(!everything.contains(&form), "a secret leaked ({form})");
    }
}

#[test]
fn the_pods_own_secret_is_used_and_named() {
    let world = world();
    world.add_secret("regcred", PASSWORD);
    world.failing_pod(&["regcred"]);
    let agent = world.agent(true);
    let note = world.event_note();
    assert!(note.contains("pull secret shop/regcred"), "{note}");
    let report = diagnosis(&agent);
    assert_eq!(report["pullable"], true, "{report}");
    // Only GETs of what the pod names (and its service account): never a list or a watch.
    let seen = world.secret_requests();
    assert!(seen.iter().all(|r| r.starts_with("GET ")), "{seen:?}");
    assert!(
        seen.contains(&"GET /api/v1/namespaces/shop/secrets/regcred".to_string()),
        "{seen:?}"
    );
    assert!(
        world.api.violations().is_empty(),
        "{:?}",
        world.api.violations()
    );
    assert_no_secret(&world, &agent);
}

#[test]
fn a_refused_secret_is_auth_failed_and_a_missing_one_credentials_unavailable() {
    let world = world();
    world.add_secret("stale", "an-old-password");
    world.failing_pod(&["stale"]);
    let agent = world.agent(true);
    let note = world.event_note();
    let report = diagnosis(&agent);
    assert_eq!(report["reason"], "auth_failed", "{report}");
    assert!(note.contains("pull secret shop/stale"), "{note}");

    // The pod now names a secret that does not exist, and the registry refuses anonymous pulls.
    let world = World {
        api: KubeApi::start(NODE),
        ..world
    };
    world.failing_pod(&["gone"]);
    let agent = world.agent(true);
    let note = world.event_note();
    let report = diagnosis(&agent);
    assert_eq!(report["reason"], "credentials_unavailable", "{report}");
    assert!(note.contains("shop/gone"), "{note}");
    assert_no_secret(&world, &agent);
}

#[test]
fn without_the_flag_no_secret_is_read() {
    let world = world();
    world.add_secret("regcred", PASSWORD);
    world.failing_pod(&["regcred"]);
    let agent = world.agent(false);
    world.event_note();
    assert_eq!(diagnosis(&agent)["reason"], "auth_required");
    assert!(
        world.secret_requests().is_empty(),
        "{:?}",
        world.secret_requests()
    );
}
