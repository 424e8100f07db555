//! A failing pod's pull secrets read through the fake API server as the agent reads them: pod's
//! first, then its service account's; only GETs by name; failures name ns/name, never a password.

use std::time::{Duration, Instant};

use base64::Engine as _;
use pullwatch::agent::pods::api::{ApiClient, ApiError};
use pullwatch::agent::pods::kubeconfig;
use pullwatch::agent::pods::object::Pod;
use pullwatch::agent::pods::secrets::{PodSecrets, Source, read_pull_secrets};
use testkit::kube_api::{KubeApi, pod, secret, service_account};

const NODE: &str = "node-a";
/// A password that must never show in a failure, a message or Debug output.
const CANARY: &str = "canary-hunter2-5c1e";
const TIMEOUT: Duration = Duration::from_secs(5);
const JSON: &str = "kubernetes.io/dockerconfigjson";
const DOCKERCFG: &str = "kubernetes.io/dockercfg";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A `.dockerconfigjson` with one `auths` entry for `registry`.
fn config_json(registry: &str, user: &str) -> String {
    format!(
        r#"{{"auths":{{"{registry}":{{"auth":"{}"}}}}}}"#,
        b64(&format!("{user}:{CANARY}"))
    )
}

/// A client as the agent makes one, from the fake API server's kubeconfig.
async fn client(api: &KubeApi) -> ApiClient {
    let config = kubeconfig::from_files(&[api.kubeconfig().to_path_buf()]).expect("kubeconfig");
    ApiClient::new(config).expect("client")
}

/// A pod in `shop` naming `secrets`, as the typed object the agent holds.
fn shop_pod(secrets: &[&str], account: Option<&str>) -> Pod {
    let mut builder = pod("shop", "web", "uid-web", NODE)
        .waiting(
            "app",
            "reg.test:5000/team/app:1",
            "ErrImagePull",
            "unauthorized",
        )
        .pull_secrets(secrets);
    if let Some(account) = account {
        builder = builder.service_account(account);
    }
    serde_json::from_value(builder.build()).expect("a Pod")
}

/// Method and path of every request, in order.
fn requests(api: &KubeApi) -> Vec<String> {
    api.requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect()
}

fn get(resource: &str, name: &str) -> String {
    format!("GET /api/v1/namespaces/shop/{resource}/{name}")
}

/// Nothing the read produced holds the canary, plain or base64.
fn assert_no_canary(read: &PodSecrets) {
    let debug = format!("{read:?}");
    let messages: Vec<&str> = read.failures.iter().map(|f| f.message.as_str()).collect();
    for text in [debug.as_str()].into_iter().chain(messages) {
        assert!(
            !text.contains(CANARY) && !text.contains(&b64(CANARY)),
            "the canary leaked: {text}"
        );
    }
}

#[tokio::test]
async fn pod_secrets_come_before_the_service_accounts_and_work() {
    let api = KubeApi::start(NODE);
    api.add_secret(secret(
        "shop",
        "regcred",
        JSON,
        &[(
            ".dockerconfigjson",
            config_json("reg.test:5000", "alice").as_bytes(),
        )],
    ));
    let legacy = format!(
        r#"{{"https://old.test":{{"auth":"{}","email":"bob@old.test"}}}}"#,
        b64(&format!("bob:{CANARY}"))
    );
    api.add_secret(secret(
        "shop",
        "legacy",
        DOCKERCFG,
        &[(".dockercfg", legacy.as_bytes())],
    ));
    api.add_secret(secret(
        "shop",
        "sa-cred",
        JSON,
        &[(
            ".dockerconfigjson",
            config_json("sa.test", "carol").as_bytes(),
        )],
    ));
    // `regcred` twice: the service account's copy is not read again.
    api.add_service_account(service_account("shop", "builder", &["regcred", "sa-cred"]));
    let client = client(&api).await;

    let read = read_pull_secrets(
        &client,
        &shop_pod(&["regcred", "legacy"], Some("builder")),
        TIMEOUT,
    )
    .await;

    assert!(read.failures.is_empty(), "{:#?}", read.failures);
    let found: Vec<(&str, &Source)> = read
        .keyrings
        .iter()
        .map(|k| (k.secret.as_str(), &k.source))
        .collect();
    let builder = Source::ServiceAccount {
        name: "builder".into(),
    };
    assert_eq!(
        found,
        [
            ("shop/regcred", &Source::Pod),
            ("shop/legacy", &Source::Pod),
            ("shop/sa-cred", &builder),
        ]
    );
    for (index, registry, repository, user) in [
        (0, "reg.test:5000", "team/app", "alice"),
        (1, "old.test", "app", "bob"),
        (2, "sa.test", "x/y", "carol"),
    ] {
        let keyring = &read.keyrings[index].keyring;
        assert_eq!(
            keyring.origin(),
            format!("pull secret {}", read.keyrings[index].secret)
        );
        let credential = keyring
            .lookup(registry, repository)
            .unwrap_or_else(|| panic!("{registry}/{repository} in {}", keyring.origin()));
        assert_eq!(credential.username, user);
        assert_eq!(credential.password.expose(), CANARY);
    }
    assert!(read.keyrings[0].keyring.lookup("old.test", "app").is_none());
    assert_no_canary(&read);

    assert_eq!(
        requests(&api),
        [
            get("secrets", "regcred"),
            get("secrets", "legacy"),
            get("serviceaccounts", "builder"),
            get("secrets", "sa-cred"),
        ]
    );
    assert!(api.violations().is_empty(), "{:?}", api.violations());
}

#[tokio::test]
async fn unusable_secrets_are_failures_that_name_them_and_not_their_content() {
    let api = KubeApi::start(NODE);
    let good = config_json("reg.test:5000", "alice");
    api.add_secret(secret(
        "shop",
        "opaque",
        "Opaque",
        &[(".dockerconfigjson", good.as_bytes())],
    ));
    api.add_secret(secret(
        "shop",
        "wrong-key",
        JSON,
        &[(".dockercfg", good.as_bytes())],
    ));
    api.add_secret(secret(
        "shop",
        "binary",
        JSON,
        &[(".dockerconfigjson", &[0xff, 0xfe, 0x00, 0x81])],
    ));
    let truncated = format!(r#"{{"auths":{{"reg.test":{{"password":"{CANARY}"#);
    api.add_secret(secret(
        "shop",
        "truncated",
        JSON,
        &[(".dockerconfigjson", truncated.as_bytes())],
    ));
    let no_colon = format!(r#"{{"auths":{{"reg.test":{{"auth":"{}"}}}}}}"#, b64(CANARY));
    api.add_secret(secret(
        "shop",
        "no-colon",
        JSON,
        &[(".dockerconfigjson", no_colon.as_bytes())],
    ));
    api.add_secret(secret(
        "shop",
        "hidden",
        JSON,
        &[(".dockerconfigjson", good.as_bytes())],
    ));
    api.forbid("secrets", "shop", "hidden");
    api.add_secret(secret(
        "shop",
        "regcred",
        JSON,
        &[(".dockerconfigjson", good.as_bytes())],
    ));
    let client = client(&api).await;
    let names = [
        "missing",
        "opaque",
        "wrong-key",
        "binary",
        "truncated",
        "no-colon",
        "hidden",
        "",
        "regcred",
    ];

    // No service account `default` in the fake: its GET is a 404 too.
    let read = read_pull_secrets(&client, &shop_pod(&names, None), TIMEOUT).await;

    let usable: Vec<&str> = read.keyrings.iter().map(|k| k.secret.as_str()).collect();
    assert_eq!(
        usable,
        ["shop/regcred"],
        "the bad ones do not stop the rest"
    );
    let failures: Vec<(&str, &str)> = read
        .failures
        .iter()
        .map(|f| (f.secret.as_str(), f.message.as_str()))
        .collect();
    let want = [
        ("shop/missing", "pull secret shop/missing: not found (404)"),
        (
            "shop/opaque",
            "pull secret shop/opaque: type \"Opaque\" is neither",
        ),
        (
            "shop/wrong-key",
            "pull secret shop/wrong-key: type kubernetes.io/dockerconfigjson but no .dockerconfigjson key",
        ),
        (
            "shop/binary",
            "pull secret shop/binary: .dockerconfigjson is not UTF-8 text",
        ),
        (
            "shop/truncated",
            "pull secret shop/truncated: .dockerconfigjson: not valid JSON",
        ),
        (
            "shop/no-colon",
            "pull secret shop/no-colon: .dockerconfigjson: auths[\"reg.test\"]: \"auth\" does not decode to username:password",
        ),
        ("shop/hidden", "pull secret shop/hidden: forbidden (403)"),
        (
            "serviceaccount shop/default",
            "service account shop/default: not found (404)",
        ),
    ];
    assert_eq!(failures.len(), want.len(), "{failures:#?}");
    for ((secret, message), (want_secret, want_start)) in failures.iter().zip(want) {
        assert_eq!(*secret, want_secret);
        assert!(message.starts_with(want_start), "{message}");
    }
    assert!(
        read.failures[..7].iter().all(|f| f.source == Source::Pod),
        "{:?}",
        read.failures
    );
    assert_no_canary(&read);

    // One GET per named secret (the empty name is skipped, as the kubelet does), then the
    // service account; nothing listed or watched.
    let mut want_requests: Vec<String> = names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| get("secrets", n))
        .collect();
    want_requests.push(get("serviceaccounts", "default"));
    assert_eq!(requests(&api), want_requests);
    assert!(api.violations().is_empty(), "{:?}", api.violations());
}

#[tokio::test]
async fn every_get_is_bounded_by_the_timeout() {
    let api = KubeApi::start(NODE);
    api.add_secret(secret(
        "shop",
        "regcred",
        JSON,
        &[(
            ".dockerconfigjson",
            config_json("reg.test:5000", "alice").as_bytes(),
        )],
    ));
    api.add_service_account(service_account("shop", "default", &[]));
    api.set_delay(Duration::from_secs(3));
    let client = client(&api).await;
    let timeout = Duration::from_millis(300);

    let started = Instant::now();
    let read = read_pull_secrets(&client, &shop_pod(&["regcred"], None), timeout).await;

    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(read.keyrings.is_empty());
    let messages: Vec<&str> = read.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "pull secret shop/regcred: no answer from the API server within 300ms",
            "service account shop/default: no answer from the API server within 300ms",
        ]
    );
}

#[tokio::test]
async fn the_fake_api_server_flags_a_list_or_watch_of_secrets() {
    let api = KubeApi::start(NODE);
    let client = client(&api).await;
    for path in [
        "/api/v1/namespaces/shop/secrets",
        "/api/v1/namespaces/shop/secrets?watch=true&resourceVersion=0",
        "/api/v1/secrets",
    ] {
        let answer = client.get_bytes(path, 1 << 20, TIMEOUT).await;
        assert!(
            matches!(answer, Err(ApiError::Status { code: 403, .. })),
            "{path}: {answer:?}"
        );
    }
    let violations = api.violations();
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(
        violations
            .iter()
            .all(|v| v.starts_with("secrets may only be read by name")),
        "{violations:?}"
    );
}
