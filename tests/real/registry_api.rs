//! `pullwatch diagnose` after `/v2/`: auth (Basic; Bearer with its token server as an endpoint of
//! its own), `--docker-config` credentials, manifests, rate limits, platforms and nearest tags.
//! The real CNCF registry with htpasswd where it can; scripted servers for what it cannot produce.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::certs::{Leaf, TlsFixtures};
use testkit::cli::Pullwatch;
use testkit::dns::DnsServer;
use testkit::image::{Image, Platform};
use testkit::ports::closed_port;
use testkit::registry::Registry;
use testkit::scripted::{Request, Response, ScriptedServer};

const HOST: &str = "registry.api.test";
const AUTH_HOST: &str = "auth.api.test";
const GONE_AUTH_HOST: &str = "gone-auth.api.test";
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const USER: &str = "alice";
const PASSWORD: &str = "Pa55-hunter2-secret";
const WRONG_PASSWORD: &str = "wrong-Pa55-hunter3";
const TOKEN: &str = "tok-4f9a0c1e-secret-bearer";
const ANONYMOUS_TOKEN: &str = "tok-anonymous-7d1b";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The test's resolver and certificates: one CA, one leaf for the registry and token server names.
struct World {
    tls: TlsFixtures,
    leaf: Leaf,
    dns: DnsServer,
    dir: tempfile::TempDir,
}

fn world() -> World {
    let tls = TlsFixtures::for_host(HOST);
    let leaf = tls.ca.valid_leaf(&[HOST, AUTH_HOST, "127.0.0.1"]);
    let dns = DnsServer::builder()
        .a(HOST, LOOPBACK)
        .a(AUTH_HOST, LOOPBACK)
        .nxdomain(GONE_AUTH_HOST)
        .start();
    let dir = tempfile::Builder::new()
        .prefix("pw-registry-api-")
        .tempdir()
        .expect("tempdir");
    World {
        tls,
        leaf,
        dns,
        dir,
    }
}

impl World {
    /// The real registry over TLS, with htpasswd when `auth`.
    fn registry(&self, auth: bool) -> Registry {
        let builder = Registry::builder().tls(&self.leaf.cert_path, &self.leaf.key_path);
        if auth {
            builder.htpasswd(USER, PASSWORD).start()
        } else {
            builder.start()
        }
    }

    /// A scripted HTTPS server with the world's certificate.
    fn scripted(
        &self,
        routes: impl FnOnce(
            testkit::scripted::ScriptedServerBuilder,
        ) -> testkit::scripted::ScriptedServerBuilder,
    ) -> ScriptedServer {
        routes(ScriptedServer::builder())
            .tls(&self.leaf.cert_path, &self.leaf.key_path)
            .start()
    }

    /// Writes a docker config with these `auths` entries; returns its path.
    fn docker_config(&self, name: &str, auths: Value) -> String {
        self.write(name, &json!({ "auths": auths }).to_string())
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path.to_str().expect("UTF-8 path").to_string()
    }

    /// The arguments every run shares: resolver, CA, a short timeout.
    fn args(&self) -> Vec<String> {
        [
            "--resolv-conf",
            self.dns.resolv_conf_str(),
            "--ca-file",
            self.tls.ca.cert_path_str(),
            "--timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `diagnose --output json` with the shared arguments, `extra` and `images`.
    fn diagnose(&self, extra: &[&str], images: &[&str]) -> (i32, Vec<Value>) {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(images.iter().map(|s| s.to_string()));
        let (code, reports) = Pullwatch::new().diagnose_json(args);
        assert_eq!(
            reports.len(),
            images.len(),
            "one JSON line per image: {reports:?}"
        );
        (code, reports)
    }
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The `auths` entry of a credential, the way `kubectl create secret docker-registry` writes it.
fn entry(user: &str, password: &str) -> Value {
    json!({ "username": user, "password": password, "auth": basic(user, password) })
}

/// The first endpoint's check named `name`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["endpoints"][0]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

/// The names of the first endpoint's checks, in order.
fn chain(report: &Value) -> Vec<String> {
    report["endpoints"][0]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {report}"))
        .iter()
        .map(|c| c["check"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Asserts `report` is not pullable for `reason`, raised by the check `by`.
fn assert_fails(report: &Value, by: &str, reason: &str) {
    assert_eq!(report["pullable"], false, "{report}");
    assert_eq!(report["reason"], reason, "{report}");
    let failed = check(report, by);
    assert_eq!(failed["ok"], false, "{by} fails: {report}");
    assert_eq!(failed["reason"], reason, "{report}");
    assert!(!text(&report["fix"]).is_empty(), "a fix is given: {report}");
}

/// `/v2/` as a registry that wants a Bearer token from `realm`.
fn bearer_v2(realm: &str) -> Response {
    Response::new(401)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="{HOST}""#),
        )
        .json(&json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}))
}

/// A manifest HEAD answer for an existing single manifest.
fn manifest_found() -> Response {
    Response::new(200)
        .header("Content-Type", OCI_MANIFEST)
        .header(
            "Docker-Content-Digest",
            "sha256:4a5e1e4baab89a3a5b8b0d2f1f8b9c6e1d3a2b4c5d6e7f8091a2b3c4d5e6f708",
        )
        .header("Docker-Distribution-API-Version", "registry/2.0")
}

#[test]
fn basic_auth_tells_missing_wrong_and_right_credentials() {
    let world = world();
    let registry = world.registry(true);
    for tag in ["1.0", "1.1", "1.2", "2.0"] {
        registry.push_image("team/app", tag);
    }
    let pushed = registry.push_image("team/app", "latest");
    let at = |path: &str| format!("{HOST}:{}/{path}", registry.port());
    let key = format!("{HOST}:{}", registry.port());

    // No credentials: /v2/ asks for Basic, the anonymous HEAD is refused.
    let (code, reports) = world.diagnose(&[], &[&at("team/app:1.0")]);
    let report = &reports[0];
    assert_eq!(code, 1, "{report}");
    assert_fails(report, "manifest", "auth_required");
    assert_eq!(
        chain(report),
        ["dns", "tcp", "tls", "http", "auth", "manifest"]
    );
    assert_eq!(check(report, "auth")["ok"], true, "{report}");
    assert!(
        text(&check(report, "auth")["detail"]).contains("Basic auth asked, no credentials"),
        "{report}"
    );
    assert!(
        text(&check(report, "manifest")["detail"]).contains("401 Unauthorized"),
        "{report}"
    );
    assert!(
        text(&report["fix"]).contains(&format!("create an imagePullSecret for {key}")),
        "{report}"
    );

    // A wrong password: the auth check proves it with GET /v2/ and stops the chain there.
    let wrong = world.docker_config("wrong.json", json!({ &key: entry(USER, WRONG_PASSWORD) }));
    let (code, reports) = world.diagnose(&["--docker-config", &wrong], &[&at("team/app:1.0")]);
    let report = &reports[0];
    assert_eq!(code, 1, "{report}");
    assert_fails(report, "auth", "auth_failed");
    assert_eq!(chain(report), ["dns", "tcp", "tls", "http", "auth"]);
    let detail = text(&check(report, "auth")["detail"]);
    assert!(
        detail.contains("user alice") && detail.contains("401 Unauthorized"),
        "{report}"
    );

    // The right credentials: one image found, a missing tag, a missing repository.
    let right = world.docker_config("right.json", json!({ &key: entry(USER, PASSWORD) }));
    let images = [
        at("team/app:latest"),
        at("team/app:1.3"),
        at("team/nope:1.0"),
    ];
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let (code, reports) = world.diagnose(&["--docker-config", &right], &images);
    assert_eq!(code, 1, "one image is not pullable");

    let found = &reports[0];
    assert_eq!(found["pullable"], true, "{found}");
    assert!(
        found["reason"].is_null() && found["fix"].is_null(),
        "{found}"
    );
    assert!(
        text(&check(found, "auth")["detail"]).contains(&format!("Basic: user alice (key {key})")),
        "{found}"
    );
    let manifest = text(&check(found, "manifest")["detail"]);
    assert!(
        manifest.contains(&pushed.digest) && manifest.contains(OCI_MANIFEST),
        "{found}"
    );
    assert!(
        text(&found["summary"]).starts_with(&format!("pullable via https://{key}")),
        "{found}"
    );

    let missing_tag = &reports[1];
    assert_fails(missing_tag, "manifest", "manifest_unknown");
    assert!(
        text(&missing_tag["summary"]).contains(&format!(
            "tag 1.3 not found in {key}/team/app (nearest tags: 1.2, 1.1, 1.0, 2.0, latest)"
        )),
        "{missing_tag}"
    );

    let missing_repo = &reports[2];
    assert_fails(missing_repo, "manifest", "repository_unknown");
    let detail = text(&check(missing_repo, "manifest")["detail"]);
    assert!(
        detail.starts_with(&format!("repository team/nope not found in {key}"))
            && detail.contains("NAME_UNKNOWN"),
        "{missing_repo}"
    );

    // HEAD for the manifests, never a GET of one (a GET spends Docker Hub quota).
    let log = registry.access_log();
    let pullwatch = |e: &&testkit::registry::AccessLogEntry| e.user_agent.starts_with("pullwatch/");
    let manifest_requests: Vec<_> = log
        .iter()
        .filter(pullwatch)
        .filter(|e| e.path.contains("/manifests/"))
        .collect();
    assert!(!manifest_requests.is_empty(), "{log:?}");
    assert!(
        manifest_requests.iter().all(|e| e.method == "HEAD"),
        "{manifest_requests:?}"
    );
    assert!(
        log.iter().filter(pullwatch).any(|e| e.method == "GET"
            && e.path.starts_with("/v2/team/nope/tags/list")
            && e.status == 404),
        "the repository's existence is asked of tags/list: {log:?}"
    );
}

#[test]
fn docker_config_keys_match_like_the_kubelet() {
    let world = world();
    let registry = world.registry(true);
    registry.push_image("team/app", "1.0");
    registry.push_image("other/app", "1.0");
    let port = registry.port();
    let image = |repo: &str| format!("{HOST}:{port}/{repo}:1.0");

    // The more specific path wins over the host-wide key; a scheme and /v1/ are ignored.
    let config = world.docker_config(
        "paths.json",
        json!({
            format!("https://{HOST}:{port}/v1/"): entry(USER, WRONG_PASSWORD),
            format!("{HOST}:{port}/team"): entry(USER, PASSWORD),
        }),
    );
    let (_, reports) = world.diagnose(
        &["--docker-config", &config],
        &[&image("team/app"), &image("other/app")],
    );
    assert_eq!(reports[0]["pullable"], true, "{}", reports[0]);
    assert!(
        text(&check(&reports[0], "auth")["detail"]).contains(&format!("key {HOST}:{port}/team")),
        "{}",
        reports[0]
    );
    assert_fails(&reports[1], "auth", "auth_failed");

    // A wildcard host, with the port.
    let config = world.docker_config(
        "wildcard.json",
        json!({ format!("*.api.test:{port}"): entry(USER, PASSWORD) }),
    );
    let (code, reports) = world.diagnose(&["--docker-config", &config], &[&image("team/app")]);
    assert_eq!(code, 0, "{}", reports[0]);

    // A key for another port does not apply: anonymous.
    let config = world.docker_config("port.json", json!({ HOST: entry(USER, PASSWORD) }));
    let (_, reports) = world.diagnose(&["--docker-config", &config], &[&image("team/app")]);
    assert_fails(&reports[0], "manifest", "auth_required");

    // The environment variable works like the flag.
    let config = world.docker_config(
        "env.json",
        json!({ format!("{HOST}:{port}"): entry(USER, PASSWORD) }),
    );
    let mut args = world.args();
    args.push(image("team/app"));
    let (code, reports) = Pullwatch::new()
        .env("PULLWATCH_DOCKER_CONFIG", &config)
        .diagnose_json(args);
    assert_eq!(code, 0, "{reports:?}");
}

#[test]
fn malformed_docker_config_is_a_usage_error_naming_the_file_and_problem() {
    let world = world();
    let secret_b64 = basic(USER, PASSWORD);
    let cases = [
        (
            "syntax.json",
            format!(r#"{{"auths": {{"{HOST}": {{"auth": "{secret_b64}"}}"#),
            "not valid JSON".to_string(),
        ),
        (
            "base64.json",
            format!(r#"{{"auths": {{"{HOST}": {{"auth": "{PASSWORD}!!"}}}}}}"#),
            format!(r#"auths["{HOST}"]: "auth" is not valid base64"#),
        ),
        (
            "shape.json",
            format!(r#"{{"auths": {{"{HOST}": "{PASSWORD}"}}}}"#),
            format!(r#"auths["{HOST}"]: not an object"#),
        ),
    ];
    for (name, content, problem) in cases {
        let path = world.write(name, &content);
        let mut args = world.args();
        args.extend([
            "--docker-config".to_string(),
            path.clone(),
            format!("{HOST}/x"),
        ]);
        let out = Pullwatch::new()
            .args(["diagnose", "--output", "json"])
            .args(args)
            .run();
        assert_eq!(out.exit_code(), 2, "{name}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("--docker-config {path}: {problem}")),
            "{name}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{name}: nothing diagnosed: {out:?}");
        for secret in [PASSWORD, &secret_b64] {
            assert!(!out.stderr.contains(secret), "{name}: {}", out.stderr);
        }
    }
    let out = Pullwatch::new()
        .args([
            "diagnose",
            "--docker-config",
            "/nonexistent/config.json",
            "x",
        ])
        .run();
    assert_eq!(out.exit_code(), 2);
    assert!(
        out.stderr
            .contains("--docker-config /nonexistent/config.json: cannot read"),
        "{}",
        out.stderr
    );
    let out = Pullwatch::new()
        .args(["diagnose", "--platform", "linux", "x"])
        .run();
    assert_eq!(out.exit_code(), 2);
    assert!(
        out.stderr.contains("--platform") && out.stderr.contains("os/arch"),
        "{}",
        out.stderr
    );
}

#[test]
fn multi_platform_indexes_must_hold_the_nodes_platform() {
    let world = world();
    let registry = world.registry(false);
    let host = Platform::host().to_string();
    let foreign = registry.push(
        "team/multi",
        "foreign",
        &Image::index(&["linux/arm64", "linux/s390x"]),
    );
    let foreign_docker = registry.push(
        "team/multi",
        "foreign-docker",
        &Image::index(&["linux/arm64", "linux/ppc64le"]).docker(),
    );
    let ours = registry.push(
        "team/multi",
        "ours",
        &Image::index(&[host.as_str(), "linux/arm64"]),
    );
    let at = |tag: &str| format!("{HOST}:{}/team/multi:{tag}", registry.port());

    let (code, reports) =
        world.diagnose(&[], &[&at("foreign"), &at("foreign-docker"), &at("ours")]);
    assert_eq!(code, 1);
    assert_fails(&reports[0], "manifest", "platform_mismatch");
    assert!(
        text(&reports[0]["summary"]).contains(&format!(
            "no {host} image in {HOST}:{}/team/multi:foreign (it has linux/arm64, linux/s390x)",
            registry.port()
        )),
        "{}",
        reports[0]
    );
    assert_fails(&reports[1], "manifest", "platform_mismatch");
    assert!(
        text(&reports[1]["summary"]).contains("(it has linux/arm64, linux/ppc64le)"),
        "{}",
        reports[1]
    );
    assert_eq!(reports[2]["pullable"], true, "{}", reports[2]);
    assert!(
        text(&check(&reports[2], "manifest")["detail"])
            .contains(&format!("{host} in the index ({host}, linux/arm64)")),
        "{}",
        reports[2]
    );

    // --platform picks another node platform: the arm64 entry (arm64/v8 is the same) is there.
    let (code, reports) = world.diagnose(&["--platform", "linux/arm64/v8"], &[&at("foreign")]);
    assert_eq!(code, 0, "{}", reports[0]);

    // The index was read by the digest the HEAD reported, with a GET (diagnose only).
    let log = registry.access_log();
    for pushed in [&foreign, &foreign_docker, &ours] {
        assert!(
            log.iter().any(|e| e.method == "GET"
                && e.path == format!("/v2/team/multi/manifests/{}", pushed.digest)
                && e.user_agent.starts_with("pullwatch/")),
            "{log:?}"
        );
    }
}

/// A token server on its own host and port: `expires_in` as given, a token for alice's password,
/// an anonymous token without credentials, 401 for any other credentials.
fn token_server(world: &World, expires_in: u64) -> ScriptedServer {
    let good = format!("Basic {}", basic(USER, PASSWORD));
    world.scripted(move |b| {
        b.route_fn("GET", "/token", move |req: &Request| {
            match req.header("authorization") {
                Some(auth) if auth == good => Response::new(200)
                    .json(&json!({ "token": TOKEN, "expires_in": expires_in, "issued_at": "2026-01-01T00:00:00Z" })),
                Some(_) => Response::new(401).json(&json!({ "details": "incorrect username or password" })),
                None => Response::new(200).json(&json!({ "token": ANONYMOUS_TOKEN, "expires_in": expires_in })),
            }
        })
    })
}

/// A registry that sends clients to `realm` and serves `team/app` to the credentialed token only.
fn bearer_registry(world: &World, realm: &str) -> ScriptedServer {
    let v2 = bearer_v2(realm);
    let denied = Response::new(401)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="{HOST}",scope="repository:team/app:pull",error="insufficient_scope""#),
        );
    world.scripted(move |b| {
        b.route("GET", "/v2/", v2).route_fn(
            "HEAD",
            "/v2/team/app/manifests/",
            move |req: &Request| {
                if req.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
                    manifest_found()
                        .header("ratelimit-limit", "100;w=21600")
                        .header("ratelimit-remaining", "76;w=21600")
                        .header("docker-ratelimit-source", "192.0.2.7")
                } else {
                    denied.clone()
                }
            },
        )
    })
}

#[test]
fn bearer_tokens_come_from_the_token_server_as_an_endpoint_of_its_own() {
    let world = world();
    let tokens = token_server(&world, 300);
    let realm = format!("https://{AUTH_HOST}:{}/token", tokens.port());
    let registry = bearer_registry(&world, &realm);
    let key = format!("{HOST}:{}", registry.port());
    let at = |tag: &str| format!("{key}/team/app:{tag}");
    let right = world.docker_config("right.json", json!({ &key: entry(USER, PASSWORD) }));

    let (code, reports) = world.diagnose(&["--docker-config", &right], &[&at("1.0"), &at("2.0")]);
    assert_eq!(code, 0, "{reports:?}");
    let first = &reports[0];
    let endpoints = first["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 2, "{first}");
    assert_eq!(endpoints[0]["endpoint"], format!("https://{key}"));
    assert_eq!(endpoints[0]["role"], "upstream");
    let auth_endpoint = &endpoints[1];
    assert_eq!(
        auth_endpoint["endpoint"],
        format!("https://{AUTH_HOST}:{}", tokens.port())
    );
    assert_eq!(auth_endpoint["role"], "auth");
    assert_eq!(
        auth_endpoint["source"],
        format!("WWW-Authenticate of https://{key}")
    );
    let auth_checks: Vec<(&str, bool)> = auth_endpoint["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| (text(&c["check"]), c["ok"] == true))
        .collect();
    assert_eq!(
        auth_checks,
        [("dns", true), ("tcp", true), ("tls", true)],
        "{first}"
    );
    assert_eq!(
        text(&check(first, "auth")["detail"]),
        format!(
            "token for repository:team/app:pull from {realm} (user alice), expires in 5m (credentials: docker config {right})"
        )
    );
    let manifest = text(&check(first, "manifest")["detail"]);
    assert!(
        manifest.contains("rate limit 76 of 100 left per 6h (source 192.0.2.7)"),
        "{first}"
    );
    // The second image of the same repository reuses the token while it is valid.
    assert!(
        text(&check(&reports[1], "auth")["detail"])
            .starts_with("cached token for repository:team/app:pull"),
        "{}",
        reports[1]
    );

    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "one token for two images: {asked:?}");
    assert!(
        asked[0].path.starts_with("/token?")
            && asked[0].path.contains(&format!("service={HOST}"))
            && asked[0]
                .path
                .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        asked[0].path
    );
    let heads: Vec<Request> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "HEAD")
        .collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let accept = heads[0].header("accept").unwrap_or_default();
    for media_type in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(
            accept.contains(media_type),
            "Accept lacks {media_type}: {accept}"
        );
    }
    assert!(
        registry
            .requests()
            .iter()
            .all(|r| r.method != "GET" || r.path == "/v2/"),
        "nothing but /v2/ is fetched with GET: {:?}",
        registry.requests()
    );

    // A token said to live 5 s lives the token spec's minimum minute (servers must not issue less;
    // containers/image floors it the same way): the second image reuses it.
    let short = token_server(&world, 5);
    let registry = bearer_registry(
        &world,
        &format!("https://{AUTH_HOST}:{}/token", short.port()),
    );
    let key = format!("{HOST}:{}", registry.port());
    let right = world.docker_config("short.json", json!({ &key: entry(USER, PASSWORD) }));
    let (code, _) = world.diagnose(
        &["--docker-config", &right],
        &[
            &format!("{key}/team/app:1.0"),
            &format!("{key}/team/app:2.0"),
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(short.requests().len(), 1, "{:?}", short.requests());
}

#[test]
fn bearer_denials_name_their_cause() {
    let world = world();
    let tokens = token_server(&world, 300);
    let realm = format!("https://{AUTH_HOST}:{}/token", tokens.port());
    let registry = bearer_registry(&world, &realm);
    let key = format!("{HOST}:{}", registry.port());
    let image = format!("{key}/team/app:1.0");

    // Anonymous: a token without access, then 401 on the HEAD (Docker Hub's missing repository too).
    let (code, reports) = world.diagnose(&[], &[&image]);
    assert_eq!(code, 1);
    let report = &reports[0];
    assert_fails(report, "manifest", "auth_required");
    assert!(
        text(&check(report, "auth")["detail"]).contains("(anonymous)"),
        "{report}"
    );
    assert!(
        text(&report["summary"]).contains(&format!(
            "anonymous pull of {key}/team/app denied, or the repository does not exist"
        )),
        "{report}"
    );
    assert!(
        text(&check(report, "manifest")["detail"]).contains("error=insufficient_scope"),
        "{report}"
    );

    // Rejected credentials: the token server's 401 is the auth check's failure.
    let wrong = world.docker_config("wrong.json", json!({ &key: entry(USER, WRONG_PASSWORD) }));
    let (_, reports) = world.diagnose(&["--docker-config", &wrong], &[&image]);
    let report = &reports[0];
    assert_fails(report, "auth", "auth_failed");
    let detail = text(&check(report, "auth")["detail"]);
    assert!(
        detail.contains("401 Unauthorized to user alice")
            && detail.contains("incorrect username or password"),
        "{report}"
    );
}

#[test]
fn an_open_v2_still_follows_the_challenge_of_the_manifest() {
    // Quay's way: /v2/ answers 200, the repository wants a token, anonymous ones included.
    let world = world();
    let tokens = token_server(&world, 300);
    let realm = format!("https://{AUTH_HOST}:{}/token", tokens.port());
    let challenge =
        format!(r#"Bearer realm="{realm}",service="{HOST}",scope="repository:team/app:pull""#);
    let registry = world.scripted(move |b| {
        b.route("GET", "/v2/", Response::registry_v2()).route_fn(
            "HEAD",
            "/v2/team/app/manifests/",
            move |req: &Request| {
                if req.header("authorization") == Some(&format!("Bearer {ANONYMOUS_TOKEN}")) {
                    manifest_found()
                } else {
                    Response::new(401).header("WWW-Authenticate", &challenge)
                }
            },
        )
    });
    let image = format!("{HOST}:{}/team/app:1.0", registry.port());
    let (code, reports) = world.diagnose(&[], &[&image]);
    let report = &reports[0];
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        text(&check(report, "auth")["detail"]),
        format!(
            "token for repository:team/app:pull from {realm} (anonymous), expires in 5m (credentials: anonymous)"
        )
    );
    assert_eq!(report["endpoints"][1]["role"], "auth", "{report}");
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].header("authorization").is_none(), "{asked:?}");
}

#[test]
fn an_unreachable_token_server_fails_as_its_own_endpoint() {
    let world = world();
    let closed = closed_port();
    let wrong_name = ScriptedServer::builder()
        .route(
            "GET",
            "/token",
            Response::new(200).json(&json!({ "token": TOKEN })),
        )
        .tls(
            &world.tls.wrong_name.cert_path,
            &world.tls.wrong_name.key_path,
        )
        .start();
    struct Case {
        realm: String,
        check: &'static str,
        reason: &'static str,
        fix: String,
    }
    let cases = [
        Case {
            realm: format!("https://{AUTH_HOST}:{closed}/token"),
            check: "tcp",
            reason: "tcp_refused",
            fix: format!("nothing listens at https://{AUTH_HOST}:{closed}"),
        },
        Case {
            realm: format!("https://{GONE_AUTH_HOST}/token"),
            check: "dns",
            reason: "dns_nxdomain",
            fix: format!("check the spelling of {GONE_AUTH_HOST}"),
        },
        Case {
            realm: format!("https://{AUTH_HOST}:{}/token", wrong_name.port()),
            check: "tls",
            reason: "tls_hostname_mismatch",
            fix: format!("https://{AUTH_HOST}:{}", wrong_name.port()),
        },
    ];
    for case in cases {
        let registry = world.scripted(|b| b.route("GET", "/v2/", bearer_v2(&case.realm)));
        let image = format!("{HOST}:{}/team/app:1.0", registry.port());
        let (code, reports) = world.diagnose(&[], &[&image]);
        let report = &reports[0];
        assert_eq!(code, 1, "{report}");
        assert_fails(report, "auth", case.reason);
        let auth_endpoint = &report["endpoints"][1];
        assert_eq!(auth_endpoint["role"], "auth", "{report}");
        let failed = auth_endpoint["checks"]
            .as_array()
            .and_then(|c| c.last())
            .expect("auth endpoint checks");
        assert_eq!(
            (text(&failed["check"]), text(&failed["reason"])),
            (case.check, case.reason),
            "{report}"
        );
        assert!(
            text(&check(report, "auth")["detail"]).starts_with("token server "),
            "{report}"
        );
        assert!(text(&report["fix"]).contains(&case.fix), "{report}");
        assert!(
            !text(&report["summary"]).contains("also failed"),
            "the token server is not a second route endpoint: {report}"
        );
    }
}

#[test]
fn the_text_report_shows_the_token_server_cause_and_fix() {
    let world = world();
    let closed = closed_port();
    let realm = format!("https://{AUTH_HOST}:{closed}/token");
    let registry = world.scripted(|b| b.route("GET", "/v2/", bearer_v2(&realm)));
    let key = format!("{HOST}:{}", registry.port());
    let mut args = world.args();
    args.extend(["diagnose".into(), format!("{key}/team/app:1.0")]);
    let out = Pullwatch::new().args(args).run();
    assert_eq!(out.exit_code(), 1, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], format!("✗ {key}/team/app:1.0: NOT pullable"));
    assert_eq!(lines[1], format!("  https://{key} (upstream, default)"));
    assert!(
        lines[6].starts_with("    ✗ auth ")
            && lines[6].contains(&format!(
                "token server https://{AUTH_HOST}:{closed} unreachable"
            )),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[7],
        format!("  https://{AUTH_HOST}:{closed} (auth, WWW-Authenticate of https://{key})")
    );
    assert!(
        lines[8].starts_with("    ✓ dns ") && lines[9].starts_with("    ✗ tcp "),
        "{}",
        out.stdout
    );
    assert!(
        lines[10].starts_with(&format!(
            "  Cause: tcp_refused: https://{key} (auth): token server"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[11],
        format!(
            "  Fix: nothing listens at https://{AUTH_HOST}:{closed}: check the port and that the registry is running"
        )
    );
}

#[test]
fn rate_limits_and_server_errors_from_the_manifest_head() {
    let world = world();
    let limited = Response::new(429)
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", "0;w=21600")
        .header("docker-ratelimit-source", "192.0.2.7")
        .json(&json!({"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}));
    let registry = world.scripted(|b| {
        b.route("GET", "/v2/", Response::registry_v2())
            .route("HEAD", "/v2/team/app/manifests/limited", limited)
            .route(
                "HEAD",
                "/v2/team/app/manifests/fine",
                manifest_found()
                    .header("ratelimit-limit", "100;w=21600")
                    .header("ratelimit-remaining", "76;w=21600"),
            )
            .route(
                "HEAD",
                "/v2/team/app/manifests/spent",
                manifest_found()
                    .header("ratelimit-limit", "100;w=21600")
                    .header("ratelimit-remaining", "0;w=21600"),
            )
            .route("HEAD", "/v2/team/app/manifests/broken", Response::new(503))
    });
    let at = |tag: &str| format!("{HOST}:{}/team/app:{tag}", registry.port());
    let (code, reports) = world.diagnose(
        &[],
        &[&at("limited"), &at("fine"), &at("spent"), &at("broken")],
    );
    assert_eq!(code, 1);

    assert_fails(&reports[0], "manifest", "rate_limited");
    let detail = text(&check(&reports[0], "manifest")["detail"]);
    assert!(
        detail.contains("429 Too Many Requests")
            && detail.contains("rate limit 0 of 100 left per 6h (source 192.0.2.7)"),
        "{}",
        reports[0]
    );
    assert!(
        text(&reports[0]["fix"]).contains("authenticate pulls"),
        "{}",
        reports[0]
    );
    assert_eq!(reports[1]["pullable"], true, "{}", reports[1]);
    assert!(
        text(&check(&reports[1], "manifest")["detail"])
            .contains("rate limit 76 of 100 left per 6h"),
        "{}",
        reports[1]
    );
    assert_fails(&reports[2], "manifest", "rate_limited");
    assert!(
        text(&reports[2]["summary"]).contains("no pulls left"),
        "{}",
        reports[2]
    );
    assert_fails(&reports[3], "manifest", "registry_unavailable");
    assert!(
        text(&check(&reports[3], "manifest")["detail"]).contains("503 Service Unavailable"),
        "{}",
        reports[3]
    );
    assert!(
        registry
            .requests()
            .iter()
            .all(|r| r.method == "HEAD" || r.path == "/v2/"),
        "HEAD only: no pull of the quota is spent: {:?}",
        registry.requests()
    );
}

#[test]
fn malformed_challenges_fail_the_auth_check_without_a_panic() {
    let world = world();
    let challenge = |value: Option<&str>| {
        let v2 = Response::new(401).header("Docker-Distribution-API-Version", "registry/2.0");
        let v2 = match value {
            Some(value) => v2.header("WWW-Authenticate", value),
            None => v2,
        };
        world.scripted(|b| b.route("GET", "/v2/", v2))
    };
    let servers = [
        (
            challenge(Some(r#"Bearer realm="https://auth.api.test/token"#)),
            "malformed WWW-Authenticate header (unterminated quoted string",
        ),
        (
            challenge(Some(r#"Bearer service="x""#)),
            "Bearer challenge without realm",
        ),
        (challenge(Some("Negotiate YII=")), "offers only negotiate"),
        (challenge(None), "without WWW-Authenticate"),
    ];
    let images: Vec<String> = servers
        .iter()
        .map(|(s, _)| format!("{HOST}:{}/team/app:1.0", s.port()))
        .collect();
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let mut args = world.args();
    args.extend(["diagnose".into(), "--output".into(), "json".into()]);
    args.extend(images.iter().map(|s| s.to_string()));
    let out = Pullwatch::new().args(args).run();
    assert_eq!(out.exit_code(), 1, "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let reports = testkit::cli::parse_json_lines(&out);
    assert_eq!(reports.len(), servers.len());
    for (report, (_, evidence)) in reports.iter().zip(&servers) {
        assert_fails(report, "auth", "not_a_registry");
        assert!(
            text(&check(report, "auth")["detail"]).contains(evidence),
            "want {evidence:?}: {report}"
        );
    }
}

#[test]
fn nearest_tags_follow_pages_up_to_a_cap() {
    let world = world();
    // Every page links to the next, forever: the listing must stop at its cap.
    let registry = world.scripted(|b| {
        b.route("GET", "/v2/", Response::registry_v2())
            .route("HEAD", "/v2/team/app/manifests/", Response::new(404))
            .route_fn("GET", "/v2/team/app/tags/list", |req: &Request| {
                let page: u32 = req
                    .path
                    .split("last=v")
                    .nth(1)
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|n| n.parse().ok())
                    .map_or(1, |last: u32| last + 1);
                Response::new(200)
                    .header(
                        "Link",
                        &format!(r#"</v2/team/app/tags/list?n=1000&last=v{page}.0>; rel="next""#),
                    )
                    .json(&json!({ "name": "team/app", "tags": [format!("v{page}.0")] }))
            })
    });
    let image = format!("{HOST}:{}/team/app:v7.1", registry.port());
    let (code, reports) = world.diagnose(&[], &[&image]);
    assert_eq!(code, 1);
    let report = &reports[0];
    assert_fails(report, "manifest", "manifest_unknown");
    assert!(
        text(&report["summary"]).contains("(nearest tags: v7.0, v9.0, v8.0, v6.0, v5.0)"),
        "{report}"
    );
    assert!(
        text(&check(report, "manifest")["detail"]).contains("tags/list has the first 10 tags"),
        "{report}"
    );
    let pages: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v2/team/app/tags/list"))
        .map(|r| r.path)
        .collect();
    assert_eq!(pages.len(), 10, "{pages:?}");
    assert_eq!(pages[0], "/v2/team/app/tags/list?n=1000");
    assert_eq!(pages[1], "/v2/team/app/tags/list?n=1000&last=v1.0");
}

#[test]
fn no_secret_in_any_output_or_log_line() {
    let world = world();
    let registry = world.registry(true);
    registry.push_image("team/app", "1.0");
    let basic_key = format!("{HOST}:{}", registry.port());
    let tokens = token_server(&world, 300);
    let bearer = bearer_registry(
        &world,
        &format!("https://{AUTH_HOST}:{}/token", tokens.port()),
    );
    let bearer_key = format!("{HOST}:{}", bearer.port());
    let config = world.docker_config(
        "secrets.json",
        json!({ &basic_key: entry(USER, PASSWORD), &bearer_key: entry(USER, PASSWORD) }),
    );
    let wrong = world.docker_config(
        "wrong.json",
        json!({ &basic_key: entry(USER, WRONG_PASSWORD), &bearer_key: entry(USER, WRONG_PASSWORD) }),
    );
    let images = [
        format!("{basic_key}/team/app:1.0"),
        format!("{basic_key}/team/app:9.9"),
        format!("{bearer_key}/team/app:1.0"),
    ];
    let secrets = [
        PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
        basic(USER, PASSWORD),
        basic(USER, WRONG_PASSWORD),
        TOKEN.to_string(),
        ANONYMOUS_TOKEN.to_string(),
    ];
    let mut runs = 0;
    for (config, output, log_format) in [
        (&config, "json", "text"),
        (&config, "text", "json"),
        (&wrong, "text", "text"),
    ] {
        let mut args = world.args();
        args.extend(
            [
                "--log-format",
                log_format,
                "--docker-config",
                config,
                "diagnose",
                "--output",
                output,
            ]
            .map(String::from),
        );
        args.extend(images.iter().cloned());
        let out = Pullwatch::new()
            .env("PULLWATCH_LOG", "trace")
            .args(args)
            .run();
        assert!(out.code.is_some(), "{out:?}");
        assert!(
            out.stderr.lines().count() > 20 && out.stderr.to_lowercase().contains("trace"),
            "trace logging was on: {}",
            out.stderr
        );
        assert!(out.stdout.contains("registry.api.test"), "{}", out.stdout);
        for secret in &secrets {
            for (stream, content) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
                assert!(
                    !content.contains(secret.as_str()),
                    "{stream} holds a secret ({output} output, {log_format} logs):\n{content}"
                );
            }
        }
        runs += 1;
    }
    assert_eq!(runs, 3);
    // The credentials did reach the servers: the test would prove nothing otherwise.
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Basic {}", basic(USER, PASSWORD)))),
        "{:?}",
        tokens.requests()
    );
    assert!(
        bearer
            .requests()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))),
        "{:?}",
        bearer.requests()
    );
}

#[test]
fn credentials_that_may_not_pull_are_forbidden() {
    let world = world();
    let tokens = token_server(&world, 300);
    let realm = format!("https://{AUTH_HOST}:{}/token", tokens.port());
    // Bearer: alice gets a token, but the registry still refuses it for this repository.
    let v2 = bearer_v2(&realm);
    let refused = Response::new(401)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="{HOST}",scope="repository:team/other:pull",error="insufficient_scope""#),
        );
    let bearer = world.scripted(move |b| {
        b.route("GET", "/v2/", v2)
            .route("HEAD", "/v2/team/other/manifests/", refused)
    });
    let bearer_key = format!("{HOST}:{}", bearer.port());
    // Basic: alice's credentials open /v2/, the repository answers 403; /v2/ of another says 403.
    let good = format!("Basic {}", basic(USER, PASSWORD));
    let basic_registry = world.scripted(move |b| {
        let good = good.clone();
        b.route_fn("GET", "/v2/", move |req: &Request| {
            if req.header("authorization") == Some(&good) {
                Response::registry_v2()
            } else {
                Response::new(401)
                    .header("Docker-Distribution-API-Version", "registry/2.0")
                    .header("WWW-Authenticate", r#"Basic realm="registry""#)
            }
        })
        .route(
            "HEAD",
            "/v2/team/secret/manifests/",
            Response::new(403).header("Docker-Distribution-API-Version", "registry/2.0"),
        )
    });
    let basic_key = format!("{HOST}:{}", basic_registry.port());
    let closed_door = world.scripted(|b| b.route("GET", "/v2/", Response::new(403)));
    let closed_key = format!("{HOST}:{}", closed_door.port());
    let config = world.docker_config(
        "alice.json",
        json!({ &bearer_key: entry(USER, PASSWORD), &basic_key: entry(USER, PASSWORD) }),
    );

    let (code, reports) = world.diagnose(
        &["--docker-config", &config],
        &[
            &format!("{bearer_key}/team/other:1.0"),
            &format!("{basic_key}/team/secret:1.0"),
            &format!("{closed_key}/team/app:1.0"),
        ],
    );
    assert_eq!(code, 1);
    assert_fails(&reports[0], "manifest", "forbidden");
    assert!(
        text(&reports[0]["summary"]).contains("user alice got a token but may not pull"),
        "{}",
        reports[0]
    );
    assert_fails(&reports[1], "manifest", "forbidden");
    assert!(
        text(&reports[1]["summary"]).contains("user alice may not pull"),
        "{}",
        reports[1]
    );
    assert_fails(&reports[2], "http", "forbidden");
    assert!(
        text(&check(&reports[2], "http")["detail"]).contains("403 Forbidden"),
        "{}",
        reports[2]
    );
}
