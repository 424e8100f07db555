//! The real error corpus: drives the real containerd (CRI `PullImage`) into every pull failure
//! reachable here, checks each message classifies to its reason, and keeps the texts in
//! tests/fixtures/containerd_errors.json (`PULLWATCH_TEST_RECORD=1` rewrites it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pullwatch::check;
use pullwatch::reason::{Reason, classify_runtime_message};
use pullwatch::runtime::{PullAuth, RuntimeClient, RuntimeError};
use serde::{Deserialize, Serialize};
use testkit::certs::TlsFixtures;
use testkit::containerd::Containerd;
use testkit::dns::DnsServer;
use testkit::image::Image;
use testkit::netns::Netns;
use testkit::ports::closed_port;
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

const FIXTURE: &str = "tests/fixtures/containerd_errors.json";
/// Longer than containerd's own 30 s dial timeout, so its message is what comes back.
const PULL_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Corpus {
    runtime: String,
    recorded_by: String,
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Case {
    case: String,
    reason: Reason,
    image: String,
    /// containerd's `PullImage` error text, verbatim (the gRPC status message).
    message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
}

/// One failure to provoke: which containerd, what to pull, with which credentials.
struct Scenario {
    case: &'static str,
    reason: Reason,
    client: Arc<RuntimeClient>,
    image: String,
    auth: Option<PullAuth>,
    note: &'static str,
}

impl Scenario {
    fn new(case: &'static str, reason: Reason, client: &Arc<RuntimeClient>, image: String) -> Self {
        Self {
            case,
            reason,
            client: client.clone(),
            image,
            auth: None,
            note: "",
        }
    }

    fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some(PullAuth {
            username: user.into(),
            password: password.into(),
        });
        self
    }

    fn note(mut self, note: &'static str) -> Self {
        self.note = note;
        self
    }

    async fn run(self) -> Result<Case, String> {
        let result = self
            .client
            .pull_image(&self.image, self.auth.as_ref(), PULL_TIMEOUT)
            .await;
        match result {
            Err(RuntimeError::Call { message, .. }) => Ok(Case {
                case: self.case.into(),
                reason: self.reason,
                image: self.image,
                message,
                note: self.note.into(),
            }),
            Err(other) => Err(format!("{}: not a runtime answer: {other}", self.case)),
            Ok(image_ref) => Err(format!(
                "{}: pulling {} succeeded ({image_ref}) but must fail",
                self.case, self.image
            )),
        }
    }
}

/// A hosts.toml sending `registry` to `server` alone (the empty `[host]` table keeps
/// containerd 1.6 from ignoring the file, containerd#10027).
fn single_server(ctrd: &Containerd, registry: &str, server: &str, ca: Option<&Path>) -> PathBuf {
    let ca = ca
        .map(|p| format!("ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    ctrd.write_hosts_toml(registry, &format!("server = \"{server}\"\n{ca}[host]\n"))
}

fn client(ctrd: &Containerd) -> Arc<RuntimeClient> {
    Arc::new(RuntimeClient::new(ctrd.socket(), Duration::from_secs(10)))
}

/// A TLS registry with Basic auth (`puller` / `right-password`) holding `private:1.0`.
fn basic_auth_registry(tls: &TlsFixtures) -> Registry {
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .htpasswd("puller", "right-password")
        .start();
    registry.push_image("private", "1.0");
    registry
}

/// A Bearer registry like Docker Hub, whose tokens never grant `team/secret` (a private or
/// missing repository), and its token server, which hands a token to anyone.
fn docker_hub_like_bearer() -> (ScriptedServer, ScriptedServer) {
    let token_server = ScriptedServer::builder()
        .route(
            "GET",
            "/token",
            Response::new(200).json(&serde_json::json!({"token": "anonymous-token"})),
        )
        .start();
    let bearer = ScriptedServer::builder()
        .route(
            "*",
            "/v2/",
            Response::new(401)
                .header(
                    "WWW-Authenticate",
                    &format!(
                        "Bearer realm=\"{}/token\",service=\"registry.test\",scope=\"repository:team/secret:pull\",error=\"insufficient_scope\"",
                        token_server.url()
                    ),
                )
                .json(&serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"team/secret","Action":"pull"}]}]})),
        )
        .start();
    (token_server, bearer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pull_errors_are_recorded_and_classified() {
    // --- servers ---
    let plain = Registry::start();
    plain.push_image("app", "1.0");
    plain.push(
        "foreign",
        "1.0",
        &Image::index(&["linux/s390x", "windows/ppc64le"]),
    );
    let ns = Netns::new();
    let tls = TlsFixtures::for_host("registry.test");
    let authed = basic_auth_registry(&tls);
    let tls_server = |leaf: &testkit::certs::Leaf| {
        let registry = Registry::builder()
            .tls(&leaf.cert_path, &leaf.key_path)
            .start();
        registry.push_image("app", "1.0");
        registry
    };
    let unknown_ca = tls_server(&tls.unknown_ca);
    let expired = tls_server(&tls.expired);
    let wrong_name = tls_server(&tls.wrong_name);
    let unavailable = ScriptedServer::builder()
        .route("*", "/", Response::new(503).body("upstream down"))
        .start();
    let throttled = ScriptedServer::builder()
        .route(
            "*",
            "/",
            Response::new(429)
                .header("Retry-After", "60")
                .json(&serde_json::json!({"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]})),
        )
        .start();
    let forbidden = ScriptedServer::builder()
        .route(
            "*",
            "/",
            Response::new(403).json(&serde_json::json!({"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]})),
        )
        .start();
    let web_page = ScriptedServer::builder()
        .route(
            "*",
            "/",
            Response::new(200)
                .header("Content-Type", "text/html")
                .body("<html><body>Welcome to nginx!</body></html>"),
        )
        .start();
    let (_token_server, bearer) = docker_hub_like_bearer();
    // A Bearer registry whose token server refuses everyone.
    let strict_token_server = ScriptedServer::builder()
        .route("*", "/token", Response::new(401).body("bad credentials"))
        .start();
    let strict_bearer = ScriptedServer::builder()
        .route(
            "*",
            "/v2/",
            Response::new(401).header(
                "WWW-Authenticate",
                &format!(
                    "Bearer realm=\"{}/token\",service=\"registry.test\",scope=\"repository:team/app:pull\"",
                    strict_token_server.url()
                ),
            ),
        )
        .start();
    // A certificate for another name, reached by name through the test DNS.
    let wrong_name_by_name = Registry::builder()
        .tls(&tls.wrong_name.cert_path, &tls.wrong_name.key_path)
        .listen_ip(ns.host_ip())
        .start();
    let refusing_proxy = ScriptedServer::refusing_proxy();

    let dns = DnsServer::builder()
        .listen_ip(ns.host_ip())
        .servfail("servfail.test")
        .refused("refused.test")
        .silent("silent.test")
        .no_addresses("empty.test")
        .a("wrongname.test", ns.host_ip())
        .start();

    // --- containerds ---
    let main = Containerd::start();
    let c = client(&main);
    let proxied = Containerd::builder()
        .env("HTTP_PROXY", &format!("http://127.0.0.1:{}", closed_port()))
        .env("HTTPS_PROXY", &refusing_proxy.url())
        .start();
    let p = client(&proxied);
    let tiny = Containerd::builder().content_store_bytes(4096).start();
    let t = client(&tiny);
    let resolving = Containerd::builder()
        .netns(&ns)
        .nameserver(ns.host_ip())
        .start();
    let r = client(&resolving);

    // --- routes (hosts.toml) ---
    let https = |addr: SocketAddr| format!("https://{addr}");
    let http = |addr: SocketAddr| format!("http://{addr}");
    for (registry, ca) in [
        (authed.addr(), Some(tls.ca.cert_path())),
        (unknown_ca.addr(), Some(tls.ca.cert_path())),
        (expired.addr(), Some(tls.ca.cert_path())),
        (wrong_name.addr(), Some(tls.ca.cert_path())),
    ] {
        single_server(&main, &registry.to_string(), &https(registry), ca);
    }
    // A plain-HTTP registry configured as HTTPS.
    let http_on_tls = format!("127.0.0.1:{}", closed_port());
    single_server(&main, &http_on_tls, &https(plain.addr()), None);
    let refused = format!("127.0.0.1:{}", closed_port());
    let timeout = ns.drop_addr().to_string();
    let unreachable = ns.unreachable_addr().to_string();
    single_server(&main, &timeout, &http(ns.drop_addr()), None);
    single_server(&main, &unreachable, &http(ns.unreachable_addr()), None);
    let wrong_name_registry = format!("wrongname.test:{}", wrong_name_by_name.port());
    single_server(
        &resolving,
        &wrong_name_registry,
        &format!("https://{wrong_name_registry}"),
        Some(tls.ca.cert_path()),
    );
    // proxy_down needs its registry to be plain HTTP, so that HTTP_PROXY applies.
    single_server(&proxied, "192.0.2.11", "http://192.0.2.11", None);

    let scenarios = vec![
        Scenario::new(
            "unknown_tag",
            Reason::ManifestUnknown,
            &c,
            format!("{}/app:9.9", plain.addr()),
        ),
        Scenario::new(
            "missing_repository",
            Reason::ManifestUnknown,
            &c,
            format!("{}/no/such/repo:1.0", plain.addr()),
        )
        .note("the HEAD of a manifest has no body: containerd cannot tell a missing repository from a missing tag"),
        Scenario::new(
            "no_credentials",
            Reason::AuthRequired,
            &c,
            format!("{}/private:1.0", authed.addr()),
        ),
        Scenario::new(
            "wrong_credentials",
            Reason::AuthRequired,
            &c,
            format!("{}/private:1.0", authed.addr()),
        )
        .auth("puller", "wrong-password")
        .note("with Basic auth containerd says the same with wrong credentials as with none; the runtime check, which knows it sent credentials, says auth_failed"),
        Scenario::new(
            "token_server_refuses_anonymous",
            Reason::AuthRequired,
            &c,
            format!("{}/team/app:1.0", strict_bearer.addr()),
        ),
        Scenario::new(
            "token_server_rejects_credentials",
            Reason::AuthFailed,
            &c,
            format!("{}/team/app:1.0", strict_bearer.addr()),
        )
        .auth("puller", "wrong-password"),
        Scenario::new(
            "bearer_token_without_access",
            Reason::AuthRequired,
            &c,
            format!("{}/team/secret:1.0", bearer.addr()),
        )
        .note("Docker Hub's answer for a private or missing repository"),
        Scenario::new(
            "forbidden",
            Reason::Forbidden,
            &c,
            format!("{}/app:1.0", forbidden.addr()),
        ),
        Scenario::new(
            "unknown_ca",
            Reason::TlsUnknownAuthority,
            &c,
            format!("{}/app:1.0", unknown_ca.addr()),
        ),
        Scenario::new(
            "expired_certificate",
            Reason::TlsExpired,
            &c,
            format!("{}/app:1.0", expired.addr()),
        ),
        Scenario::new(
            "wrong_name_certificate",
            Reason::TlsHostnameMismatch,
            &c,
            format!("{}/app:1.0", wrong_name.addr()),
        ),
        Scenario::new(
            "wrong_name_certificate_by_name",
            Reason::TlsHostnameMismatch,
            &r,
            format!("{wrong_name_registry}/app:1.0"),
        ),
        Scenario::new(
            "http_on_tls_port",
            Reason::TlsHandshake,
            &c,
            format!("{http_on_tls}/app:1.0"),
        ),
        Scenario::new(
            "plain_http_to_tls_port",
            Reason::TlsHandshake,
            &p,
            format!("{}/app:1.0", unknown_ca.addr()),
        )
        .note("no hosts.toml: containerd speaks plain HTTP to a registry on localhost; Go's TLS server answers 400"),
        Scenario::new(
            "connection_refused",
            Reason::TcpRefused,
            &c,
            format!("{refused}/app:1.0"),
        ),
        Scenario::new(
            "connect_timeout",
            Reason::TcpTimeout,
            &c,
            format!("{timeout}/app:1.0"),
        ),
        Scenario::new(
            "no_route_to_host",
            Reason::TcpUnreachable,
            &c,
            format!("{unreachable}/app:1.0"),
        ),
        Scenario::new(
            "server_error_503",
            Reason::RegistryUnavailable,
            &c,
            format!("{}/app:1.0", unavailable.addr()),
        ),
        Scenario::new(
            "rate_limited_429",
            Reason::RateLimited,
            &c,
            format!("{}/app:1.0", throttled.addr()),
        ),
        Scenario::new(
            "not_a_registry",
            Reason::NotARegistry,
            &c,
            format!("{}/app:1.0", web_page.addr()),
        ),
        Scenario::new(
            "platform_mismatch",
            Reason::PlatformMismatch,
            &c,
            format!("{}/foreign:1.0", plain.addr()),
        ),
        Scenario::new(
            "invalid_reference",
            Reason::InvalidReference,
            &c,
            "Team/App:1.0".into(),
        ),
        Scenario::new(
            "proxy_refused_connect",
            Reason::ProxyError,
            &p,
            "192.0.2.10:5000/app:1.0".into(),
        )
        .note("HTTPS_PROXY answers 403 to CONNECT"),
        Scenario::new(
            "proxy_down",
            Reason::ProxyError,
            &p,
            "192.0.2.11/app:1.0".into(),
        )
        .note("HTTP_PROXY points at a closed port; the registry is plain HTTP (hosts.toml)"),
        Scenario::new(
            "disk_full",
            Reason::DiskFull,
            &t,
            format!("{}/app:1.0", plain.addr()),
        )
        .note("the content store is a 4 KiB tmpfs"),
        Scenario::new(
            "dns_nxdomain",
            Reason::DnsNxdomain,
            &r,
            "missing.test/app:1.0".into(),
        ),
        Scenario::new(
            "dns_no_addresses",
            Reason::DnsNxdomain,
            &r,
            "empty.test/app:1.0".into(),
        )
        .note("Go's resolver says \"no such host\" for a name without A/AAAA too"),
        Scenario::new(
            "dns_servfail",
            Reason::DnsServfail,
            &r,
            "servfail.test/app:1.0".into(),
        ),
        Scenario::new(
            "dns_refused",
            Reason::DnsServfail,
            &r,
            "refused.test/app:1.0".into(),
        ),
        Scenario::new(
            "dns_timeout",
            Reason::DnsTimeout,
            &r,
            "silent.test/app:1.0".into(),
        ),
    ];
    let results = run_all(scenarios).await;
    let mut recorded = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(case) => recorded.push(case),
            Err(error) => failures.push(error),
        }
    }
    for case in &recorded {
        let got = classify_runtime_message(&case.message);
        if got != case.reason {
            failures.push(format!(
                "{}: classified {got}, must be {}: {}",
                case.case, case.reason, case.message
            ));
        }
    }
    let version = c.version().await.expect("containerd answers Version");
    let corpus = Corpus {
        runtime: format!("{} {}", version.runtime_name, version.runtime_version),
        recorded_by: "tests/containerd_errors.rs".into(),
        cases: recorded,
    };
    if std::env::var_os("PULLWATCH_TEST_RECORD").is_some() {
        let json = serde_json::to_string_pretty(&corpus).expect("corpus JSON");
        std::fs::create_dir_all("tests/fixtures").expect("create tests/fixtures");
        std::fs::write(FIXTURE, json + "\n").expect("write the fixture");
    } else {
        failures.extend(compare_with_fixture(&corpus));
    }
    // containerd in its netns asked the test DNS server, not the host's resolver.
    for name in ["servfail.test", "silent.test", "missing.test"] {
        if dns.queries(name) == 0 {
            failures.push(format!(
                "containerd never asked the test DNS server for {name}"
            ));
        }
    }
    drop(resolving);
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The runtime check knows it sent credentials: a registry's bare `401 Unauthorized` to them
/// (Basic auth) is `auth_failed`; Docker Hub's `pull access denied … insufficient_scope`, a
/// private or missing repository, stays `auth_required` whatever was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_check_blames_sent_credentials_only_for_a_basic_401() {
    let tls = TlsFixtures::for_host("registry.test");
    let authed = basic_auth_registry(&tls);
    let (token_server, bearer) = docker_hub_like_bearer();
    let ctrd = Containerd::start();
    single_server(
        &ctrd,
        &authed.addr().to_string(),
        &format!("https://{}", authed.addr()),
        Some(tls.ca.cert_path()),
    );
    let c = client(&ctrd);
    let wrong = PullAuth {
        username: "puller".into(),
        password: "wrong-password".into(),
    };
    let cases = [
        (
            format!("{}/private:1.0", authed.addr()),
            Reason::AuthFailed,
            "401 Unauthorized",
        ),
        (
            format!("{}/team/secret:1.0", bearer.addr()),
            Reason::AuthRequired,
            "insufficient_scope",
        ),
    ];
    for (image, want, evidence) in cases {
        let failed = check::runtime::check(&c, &image, Some(&wrong), PULL_TIMEOUT)
            .await
            .expect_err("the pull must fail");
        assert_eq!(failed.reason, want, "{image}: {}", failed.message);
        assert!(
            failed.message.contains(evidence),
            "{image}: {}",
            failed.message
        );
    }
    assert!(
        !token_server.requests().is_empty(),
        "containerd asked the token server"
    );
}

/// Runs every scenario at once (the slow ones wait out containerd's own timeouts).
async fn run_all(scenarios: Vec<Scenario>) -> Vec<Result<Case, String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, scenario) in scenarios.into_iter().enumerate() {
        tasks.spawn(async move { (i, scenario.run().await) });
    }
    let mut results = Vec::new();
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            results.push(joined.expect("scenario task"));
        }
    };
    tokio::time::timeout(Duration::from_secs(150), all)
        .await
        .expect("all pulls end within 150 s");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The committed fixture must hold the same cases with the same texts (ports, addresses,
/// digests and temp names aside).
fn compare_with_fixture(corpus: &Corpus) -> Vec<String> {
    let text = match std::fs::read_to_string(FIXTURE) {
        Ok(text) => text,
        Err(e) => {
            return vec![format!(
                "{FIXTURE}: {e} (record it with PULLWATCH_TEST_RECORD=1)"
            )];
        }
    };
    let fixture: Corpus = serde_json::from_str(&text).expect("fixture is valid JSON");
    let mut problems = Vec::new();
    if fixture.runtime != corpus.runtime {
        problems.push(format!(
            "fixture recorded from {}, this is {}: re-record with PULLWATCH_TEST_RECORD=1",
            fixture.runtime, corpus.runtime
        ));
    }
    for case in &corpus.cases {
        match fixture.cases.iter().find(|f| f.case == case.case) {
            None => problems.push(format!("{}: missing from {FIXTURE}", case.case)),
            Some(f) if f.reason != case.reason => problems.push(format!(
                "{}: fixture says {}, the test says {}",
                case.case, f.reason, case.reason
            )),
            Some(f) if normalize(&f.message) != normalize(&case.message) => problems.push(format!(
                "{}: containerd now says\n  {}\nthe fixture has\n  {}",
                case.case, case.message, f.message
            )),
            Some(_) => {}
        }
    }
    for f in &fixture.cases {
        if !corpus.cases.iter().any(|c| c.case == f.case) {
            problems.push(format!("{}: in {FIXTURE} but not recorded", f.case));
        }
    }
    problems
}

/// Masks what differs between runs: long hex runs (digests, ingest refs), digits (ports,
/// addresses), and tempdir suffixes.
fn normalize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let chars: Vec<char> = message.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let hex_run = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            .count();
        if hex_run >= 32 {
            out.push_str("<hex>");
            i += hex_run;
            continue;
        }
        if chars[i].is_ascii_digit() {
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            out.push('#');
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    // tempfile names: pw-containerd-XXXXXX
    let mut masked = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find("pw-containerd-") {
        let after = at + "pw-containerd-".len();
        masked.push_str(&rest[..after]);
        masked.push_str("<tmp>");
        let tail = &rest[after..];
        let skip = tail
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .unwrap_or(tail.len());
        rest = &tail[skip..];
    }
    masked.push_str(rest);
    masked
}

/// Every recorded message classifies to its reason, never `unknown`; so does the kubelet's form
/// of it (`rpc error: code = … desc = …`). Runs without containerd.
#[test]
fn recorded_messages_classify_to_their_reasons() {
    let text = std::fs::read_to_string(FIXTURE)
        .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (record it with PULLWATCH_TEST_RECORD=1)"));
    let corpus: Corpus = serde_json::from_str(&text).expect("fixture is valid JSON");
    assert!(
        corpus.cases.len() >= 20,
        "the corpus has only {} cases",
        corpus.cases.len()
    );
    let mut failures = Vec::new();
    for case in &corpus.cases {
        for message in [
            case.message.clone(),
            format!("rpc error: code = Unknown desc = {}", case.message),
        ] {
            let got = classify_runtime_message(&message);
            if got == Reason::Unknown || got != case.reason {
                failures.push(format!(
                    "{}: {got} (want {}): {message}",
                    case.case, case.reason
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn normalize_masks_what_varies_between_runs() {
    assert_eq!(
        normalize("dial tcp 127.0.0.1:40833: connect: connection refused"),
        "dial tcp #.#.#.#:#: connect: connection refused"
    );
    assert_eq!(
        normalize(&format!(
            "open /tmp/pw-containerd-j6Fydx/root/x/sha256:{}: no space",
            "ab12".repeat(16)
        )),
        "open /tmp/pw-containerd-<tmp>/root/x/sha#:<hex>: no space"
    );
}
