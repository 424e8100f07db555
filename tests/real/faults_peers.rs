//! Hostile and broken peers (issue 13): a resolver that answers A but drops AAAA behind a long
//! search list, token servers with odd lifetimes, realms and redirects aimed at addresses the route
//! does not name (loopback addresses other than the registry's stand in for 169.254.169.254), a
//! cleartext realm on another host, a 100 KB realm, an endless index, control characters in names.
//! Each asserts the reason, what the peer received, and a bound on time or size.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::cli::Pullwatch;
use testkit::dns::DnsServer;
use testkit::scripted::{Request, Response, ScriptedServer};

const HOST: &str = "registry.peers.test";
/// Another name for the registry's own address: another host to a client, the same machine.
const AUTH_HOST: &str = "auth.peers.test";
/// A name that leads to an address the route does not name (the metadata service's stand-in).
const META_HOST: &str = "meta.peers.test";
const META_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const USER: &str = "alice";
const PASSWORD: &str = "Pa55-peers-secret";
const TOKEN: &str = "tok-peers-9c1e";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DIGEST: &str = "sha256:4a5e1e4baab89a3a5b8b0d2f1f8b9c6e1d3a2b4c5d6e7f8091a2b3c4d5e6f708";

fn dns() -> DnsServer {
    DnsServer::builder()
        .a(HOST, Ipv4Addr::LOCALHOST)
        .a(AUTH_HOST, Ipv4Addr::LOCALHOST)
        .a(META_HOST, META_IP)
        .start()
}

/// A plain-HTTP registry at `HOST:<port>` whose `/v2/` answers `v2` and whose manifest HEAD
/// answers 200 only with `Authorization: Bearer TOKEN` when `want_token`, else always.
fn registry(v2: Response, want_token: bool) -> ScriptedServer {
    ScriptedServer::builder()
        .route("GET", "/v2/", v2)
        .route_fn("HEAD", "/v2/team/app/manifests/", move |req: &Request| {
            let bearer = format!("Bearer {TOKEN}");
            if want_token && req.header("authorization") != Some(bearer.as_str()) {
                return Response::new(401)
                    .header("Docker-Distribution-API-Version", "registry/2.0")
                    .json(&json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}));
            }
            Response::new(200)
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", DIGEST)
                .header("Docker-Distribution-API-Version", "registry/2.0")
        })
        .start()
}

fn bearer_v2(realm: &str) -> Response {
    Response::new(401)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="{HOST}""#),
        )
}

/// A token server answering every request with `body`, listening on `ip`.
fn token_server(ip: Ipv4Addr, body: Value) -> ScriptedServer {
    ScriptedServer::builder()
        .listen_ip(ip)
        .route("GET", "/", Response::new(200).json(&body))
        .start()
}

/// A docker config holding alice's credentials for `registry`.
fn docker_config(dir: &tempfile::TempDir, registry: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .expect("write docker config");
    path.to_str().expect("UTF-8 path").to_string()
}

/// `diagnose --output json` of `HOST:<port>/team/app:1` over plain HTTP; one report.
fn diagnose(resolv_conf: &str, port: u16, timeout: &str, extra: &[&str]) -> Value {
    let registry = format!("{HOST}:{port}");
    let mut args = vec![
        "--resolv-conf".to_string(),
        resolv_conf.to_string(),
        "--insecure-registry".into(),
        registry.clone(),
        "--timeout".into(),
        timeout.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("{registry}/team/app:1"));
    let (_, mut reports) = Pullwatch::new().diagnose_json(args);
    assert_eq!(reports.len(), 1, "{reports:?}");
    reports.remove(0)
}

/// [`diagnose`] of a token-protected registry whose `/v2/` answers `v2`, with alice's credentials.
fn with_credentials(dns: &DnsServer, dir: &tempfile::TempDir, v2: Response) -> Value {
    let registry = registry(v2, true);
    let config = docker_config(dir, &format!("{HOST}:{}", registry.port()));
    diagnose(
        dns.resolv_conf_str(),
        registry.port(),
        "3s",
        &["--docker-config", &config],
    )
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["endpoints"][0]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

fn detail<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["detail"].as_str().unwrap_or_default()
}

/// No request the peer received carried an `Authorization` header.
fn no_credentials(server: &ScriptedServer) -> bool {
    server
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none())
}

/// A resolv.conf holding `text`, in a directory kept as long as the first value.
fn resolv_conf_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, text).expect("write resolv.conf");
    (dir, path)
}

/// As the runtime's (Go's) resolver: a nameserver that fails (SERVFAIL) passes the question to
/// the next one, and a name with fewer dots than `ndots` is asked with the search suffixes first,
/// so a registry found through a suffix is found there, the bare name never asked.
#[test]
fn a_failing_nameserver_passes_the_question_on_and_search_suffixes_come_first() {
    let suffixed = format!("{HOST}.corp.test");
    let broken = DnsServer::builder()
        .servfail(&suffixed)
        .servfail(HOST)
        .start();
    let good = DnsServer::builder()
        .a(&suffixed, Ipv4Addr::LOCALHOST)
        .start();
    let (_dir, resolv_conf) = resolv_conf_file(&format!(
        "nameserver {}\nnameserver {}\nsearch corp.test\noptions ndots:5 timeout:1 attempts:1\n",
        broken.ip(),
        good.ip()
    ));
    let registry = registry(Response::registry_v2(), false);

    let report = diagnose(
        resolv_conf.to_str().expect("UTF-8"),
        registry.port(),
        "3s",
        &[],
    );

    assert_eq!(report["pullable"], true, "{report}");
    let evidence = detail(&report, "dns");
    assert!(
        evidence.contains("A 127.0.0.1")
            && evidence.contains(&format!("nameserver {},{}", broken.ip(), good.ip())),
        "{evidence}"
    );
    let first = broken.query_log().first().map(|q| q.name.clone());
    assert_eq!(
        first.as_deref(),
        Some(suffixed.as_str()),
        "the suffixed name is asked first"
    );
    // The A walk stops at the suffix that resolved. (The AAAA walk may go on to the bare name
    // before A's answer is in: the check walks the families apart, see the dns check's notes.)
    let asked_bare_a = |dns: &DnsServer| {
        dns.query_log()
            .iter()
            .any(|q| q.name == HOST && q.record_type.to_string() == "A")
    };
    assert!(
        !asked_bare_a(&broken) && !asked_bare_a(&good),
        "the bare name's A is not asked once a suffix resolved"
    );
    assert!(good.queries(&suffixed) > 0, "the second server was asked");
}

#[test]
fn a_resolver_that_drops_aaaa_behind_a_long_search_list_still_resolves_within_the_timeout() {
    // Every AAAA query is dropped; six search domains come first (ndots:5), each NXDOMAIN for A,
    // each silent for AAAA: unbounded, the AAAA side alone would take 7 names × 2 × 1 s.
    let dns = DnsServer::builder()
        .a(HOST, Ipv4Addr::LOCALHOST)
        .drop_aaaa()
        .start();
    let (_dir, resolv_conf) = resolv_conf_file(&format!(
        "nameserver {}\nsearch a.test b.test c.test d.test e.test f.test\noptions ndots:5 timeout:1 attempts:2\n",
        dns.ip()
    ));
    let registry = registry(Response::registry_v2(), false);

    let started = Instant::now();
    let report = diagnose(
        resolv_conf.to_str().expect("UTF-8"),
        registry.port(),
        "2s",
        &[],
    );
    let took = started.elapsed();

    // Go's resolver (containerd, CRI-O) takes the A answer and pulls: so does the verdict.
    assert_eq!(report["pullable"], true, "{report}");
    let dns_check = check(&report, "dns");
    assert_eq!(dns_check["ok"], true, "{report}");
    let evidence = detail(&report, "dns");
    assert!(
        evidence.contains("A 127.0.0.1") && evidence.contains("AAAA timed out"),
        "the silent family is noted: {evidence}"
    );
    // The whole lookup (every search name, both families) stays within --timeout.
    let seconds = dns_check["seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(seconds <= 2.0, "dns took {seconds}s with --timeout 2s");
    assert!(took < Duration::from_secs(12), "diagnose took {took:?}");
    let aaaa = dns
        .query_log()
        .iter()
        .filter(|q| q.record_type.to_string() == "AAAA")
        .count();
    assert!(aaaa > 0, "AAAA was asked (and dropped)");
}

#[test]
fn token_lifetimes_are_lenient_and_unusable_token_answers_say_so() {
    let dns = dns();
    let dir = tempfile::tempdir().expect("tempdir");
    for (body, want) in [
        (
            json!({"token": TOKEN, "expires_in": -1}),
            Ok("expires in 1m"),
        ),
        (
            json!({"access_token": TOKEN, "expires_in": 0}),
            Ok("expires in 1m"),
        ),
        (
            json!({"token": TOKEN, "expires_in": "300"}),
            Err("expires_in is a string"),
        ),
        (json!({"expires_in": 300}), Err("no token in it")),
    ] {
        // The realm is the registry's own host (one endpoint), as distribution's token server is.
        let tokens = token_server(Ipv4Addr::LOCALHOST, body.clone());
        let realm = format!("http://{HOST}:{}/token", tokens.port());
        let report = with_credentials(&dns, &dir, bearer_v2(&realm));
        let auth = check(&report, "auth");
        match want {
            Ok(lifetime) => {
                assert_eq!(report["pullable"], true, "{body}: {report}");
                let evidence = auth["detail"].as_str().unwrap_or_default();
                assert!(evidence.contains(lifetime), "{body}: {evidence}");
            }
            Err(problem) => {
                assert_eq!(report["pullable"], false, "{body}: {report}");
                assert_eq!(report["reason"], "registry_unavailable", "{body}: {report}");
                assert_eq!(auth["reason"], "registry_unavailable", "{body}: {report}");
                let evidence = auth["detail"].as_str().unwrap_or_default();
                assert!(evidence.contains(problem), "{body}: {evidence}");
            }
        }
        assert_eq!(tokens.requests().len(), 1, "{body}: one token request");
    }
}

#[test]
fn realms_at_addresses_the_route_does_not_name_get_no_request_and_no_credentials() {
    let dns = dns();
    let dir = tempfile::tempdir().expect("tempdir");
    // By address (as `http://169.254.169.254/…`), then by a name that resolves there.
    for (realm_host, ip) in [
        (OTHER_IP.to_string(), OTHER_IP),
        (META_HOST.to_string(), META_IP),
    ] {
        let tokens = token_server(ip, json!({"token": TOKEN, "expires_in": 300}));
        let realm = format!("http://{realm_host}:{}/latest/meta-data/", tokens.port());
        let report = with_credentials(&dns, &dir, bearer_v2(&realm));
        assert_eq!(report["pullable"], false, "{report}");
        assert_eq!(report["reason"], "not_a_registry", "{report}");
        let evidence = detail(&report, "auth");
        assert!(
            evidence.contains("not contacted")
                && evidence.contains(&format!("{ip} is a loopback or link-local address")),
            "{evidence}"
        );
        assert!(
            tokens.requests().is_empty(),
            "the realm at {realm_host} got {:?}",
            tokens.requests()
        );
        assert!(!report.to_string().contains(PASSWORD));
    }
}

#[test]
fn a_cleartext_realm_on_another_host_gets_no_credentials() {
    let dns = dns();
    let dir = tempfile::tempdir().expect("tempdir");
    // The same machine under another name, over plain HTTP: asked anonymously, and it says so.
    let tokens = token_server(
        Ipv4Addr::LOCALHOST,
        json!({"token": "tok-anonymous", "expires_in": 300}),
    );
    let realm = format!("http://{AUTH_HOST}:{}/token", tokens.port());
    let report = with_credentials(&dns, &dir, bearer_v2(&realm));
    assert_eq!(tokens.requests().len(), 1, "{:?}", tokens.requests());
    assert!(no_credentials(&tokens), "{:?}", tokens.requests());
    assert_eq!(report["pullable"], false, "{report}");
    assert_eq!(report["reason"], "auth_required", "{report}");
    let auth = detail(&report, "auth");
    assert!(
        auth.contains("anonymous: credentials withheld, the realm is on another host"),
        "{auth}"
    );
    let manifest = detail(&report, "manifest");
    assert!(manifest.contains("credentials withheld"), "{manifest}");
}

/// A redirect to another name is looked up as the dns check looks names up (the node's
/// resolv.conf, by the runtime's rules), not by the agent's own system resolver, which knows
/// nothing of the test's names.
#[test]
fn a_redirect_by_name_is_resolved_with_the_nodes_resolver() {
    let dns = dns();
    let moved = ScriptedServer::builder()
        .route("GET", "/v2/", Response::registry_v2())
        .start();
    let location = format!("http://{AUTH_HOST}:{}/v2/", moved.port());
    let registry = registry(Response::new(302).header("Location", &location), false);
    let report = diagnose(dns.resolv_conf_str(), registry.port(), "3s", &[]);
    assert_eq!(
        moved.requests().len(),
        1,
        "the redirect was followed: {report}"
    );
    assert_eq!(check(&report, "http")["ok"], true, "{report}");
    assert!(
        dns.queries(AUTH_HOST) > 0,
        "the redirect's host was asked of the node's DNS"
    );
}

#[test]
fn redirects_to_addresses_the_route_does_not_name_are_not_followed() {
    let dns = dns();
    let metadata = ScriptedServer::builder()
        .listen_ip(OTHER_IP)
        .route("*", "/", Response::new(200).body("ami-id\nhostname\n"))
        .start();
    let location = format!("http://{OTHER_IP}:{}/latest/meta-data/", metadata.port());
    let registry = registry(Response::new(302).header("Location", &location), false);
    // Two rounds: the redirect is followed in none.
    for _ in 0..2 {
        let report = diagnose(dns.resolv_conf_str(), registry.port(), "3s", &[]);
        assert_eq!(report["reason"], "not_a_registry", "{report}");
        let evidence = detail(&report, "http");
        assert!(
            evidence.contains("302 Found, a redirect to")
                && evidence.contains("that pullwatch does not follow"),
            "{evidence}"
        );
    }
    assert!(metadata.requests().is_empty(), "{:?}", metadata.requests());
}

#[test]
fn a_redirect_to_another_host_carries_no_credentials() {
    let dns = dns();
    let dir = tempfile::tempdir().expect("tempdir");
    // The registry's own address under another name: followed, but without the Basic credentials.
    let other = ScriptedServer::builder()
        .route("HEAD", "/", Response::new(404))
        .start();
    let registry = ScriptedServer::builder()
        .route_fn("GET", "/v2/", |req: &Request| {
            match req.header("authorization") {
                Some(_) => Response::registry_v2(),
                None => Response::new(401)
                    .header("Docker-Distribution-API-Version", "registry/2.0")
                    .header("WWW-Authenticate", r#"Basic realm="registry""#),
            }
        })
        .route_fn("*", "/v2/team/", {
            // `localhost`: the redirect's name must resolve through the system's resolver.
            let to = format!("http://localhost:{}/elsewhere", other.port());
            move |_: &Request| Response::new(307).header("Location", &to)
        })
        .start();
    let config = docker_config(&dir, &format!("{HOST}:{}", registry.port()));
    let report = diagnose(
        dns.resolv_conf_str(),
        registry.port(),
        "3s",
        &["--docker-config", &config],
    );
    assert_eq!(report["pullable"], false, "{report}");
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.method == "HEAD" && r.header("authorization").is_some()),
        "the registry got the credentials: {:?}",
        registry.requests()
    );
    assert!(!other.requests().is_empty(), "the redirect was followed");
    assert!(no_credentials(&other), "{:?}", other.requests());
}

#[test]
fn a_100kb_realm_and_an_endless_index_get_their_reasons_in_a_bounded_report() {
    let dns = dns();
    let realm = format!("http://{HOST}/token?pad={}", "x".repeat(100 << 10));
    let huge = registry(bearer_v2(&realm), true);
    let report = diagnose(dns.resolv_conf_str(), huge.port(), "3s", &[]);
    let shown: String = report.to_string().chars().take(2000).collect();
    assert_eq!(report["reason"], "not_a_registry", "{shown}");
    assert!(detail(&report, "auth").contains("over pullwatch's 8 KiB limit"));
    let size = report.to_string().len();
    assert!(size < 16 << 10, "a {size}-byte report for a 100 KB realm");

    // An index that never ends (6 MiB here, read up to the 4 MiB cap).
    let endless = ScriptedServer::builder()
        .route("GET", "/v2/", Response::registry_v2())
        .route(
            "HEAD",
            "/v2/team/app/manifests/",
            Response::new(200)
                .header("Content-Type", OCI_INDEX)
                .header("Docker-Content-Digest", DIGEST)
                .header("Docker-Distribution-API-Version", "registry/2.0"),
        )
        .route(
            "GET",
            "/v2/team/app/manifests/",
            Response::new(200)
                .header("Content-Type", OCI_INDEX)
                .body(format!("{{\"manifests\":[{}", "{},".repeat(2 << 20))),
        )
        .start();
    let report = diagnose(dns.resolv_conf_str(), endless.port(), "3s", &[]);
    assert_eq!(report["reason"], "registry_unavailable", "{report}");
    let evidence = detail(&report, "manifest");
    assert!(evidence.contains("is over 4 MiB (cut there)"), "{evidence}");
    assert!(report.to_string().len() < 16 << 10);
}

#[test]
fn control_characters_in_an_image_name_never_reach_the_terminal_raw() {
    let dns = dns();
    let image = "registry.peers.test/app:1\n  Cause: none\u{1b}[2J\u{1b}]0;owned\u{7}";
    let out = Pullwatch::new()
        .args(["--resolv-conf", dns.resolv_conf_str()])
        .args(["diagnose", "--output", "text", image])
        .run();
    assert_eq!(out.exit_code(), 1, "{}", out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains('\u{1b}') && !all.contains('\u{7}'), "{all:?}");
    assert!(
        !out.stdout.lines().any(|l| l.trim_start() == "Cause: none"),
        "an injected line: {:?}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\\n  Cause: none\\u{1b}[2J"),
        "{:?}",
        out.stdout
    );
}
