//! `pullwatch diagnose` along the runtime's real route: the real containerd and its certs.d,
//! mirrors down and up, a hosts.toml `ca`, `client` (mutual TLS) and `skip_verify`,
//! `--via-runtime`, and CRI-O's registries.conf.

use std::path::Path;

use serde_json::Value;
use testkit::certs::{TestCa, TlsFixtures};
use testkit::cli::Pullwatch;
use testkit::containerd::Containerd;
use testkit::http::Client;
use testkit::netns::Netns;
use testkit::ports::closed_port;
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

/// `pullwatch diagnose --output json [DIAGNOSE FLAGS] IMAGE` against `ctrd` and its certs.d.
pub(crate) fn diagnose(ctrd: &Containerd, flags: &[&str], image: &str) -> (i32, Value) {
    let (code, reports) = Pullwatch::new()
        .args([
            "--runtime-endpoint",
            &ctrd.endpoint(),
            "--containerd-certs-dir",
            ctrd.certs_dir_str(),
            "--timeout",
            "5s",
        ])
        .diagnose_json(flags.iter().copied().chain([image]));
    assert_eq!(reports.len(), 1, "{reports:?}");
    (code, reports.into_iter().next().expect("one report"))
}

/// The checks of one endpoint as (check, ok, reason).
pub(crate) fn checks(endpoint: &Value) -> Vec<(String, bool, String)> {
    endpoint["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default().to_string(),
                c["ok"].as_bool().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub(crate) fn check_named<'a>(endpoint: &'a Value, name: &str) -> Option<&'a Value> {
    endpoint["checks"]
        .as_array()?
        .iter()
        .find(|c| c["check"] == name)
}

/// Every check of the endpoint passed, and it got as far as each of `through`.
pub(crate) fn passed(endpoint: &Value, through: &[&str]) -> bool {
    let checks = checks(endpoint);
    checks.iter().all(|(_, ok, _)| *ok)
        && through
            .iter()
            .all(|name| checks.iter().any(|(c, _, _)| c == name))
}

/// A check's evidence, or "" when the check is missing.
pub(crate) fn detail(check: Option<&Value>) -> &str {
    check.and_then(|c| c["detail"].as_str()).unwrap_or_default()
}

pub(crate) fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// A mirror that serves `registry` under its own API root `root` (`<root>/x` is the registry's
/// `/v2/x`), as a Harbor proxy project does; anything else answers 404. A HEAD is answered from a
/// GET of the same path, so its `Content-Length` is the real one (the server sends only the head).
fn mirror_under(root: &'static str, registry: std::net::SocketAddr) -> ScriptedServer {
    ScriptedServer::builder()
        .route_fn("*", &format!("{root}/"), move |request| {
            let path = format!("/v2{}", &request.path[root.len()..]);
            let method = if request.method == "HEAD" {
                "GET"
            } else {
                request.method.as_str()
            };
            let headers: Vec<(&str, &str)> = ["accept", "authorization"]
                .into_iter()
                .filter_map(|name| request.header(name).map(|value| (name, value)))
                .collect();
            match Client::http(registry).request(method, &path, &headers, &request.body) {
                Ok(answer) => {
                    let mut response = Response::new(answer.status).body(answer.body);
                    for (name, value) in &answer.headers {
                        if !matches!(
                            name.as_str(),
                            "content-length" | "connection" | "transfer-encoding"
                        ) {
                            response = response.header(name, value);
                        }
                    }
                    response
                }
                Err(error) => Response::new(502).body(error.to_string()),
            }
        })
        .start()
}

#[test]
fn mirror_down_upstream_up_is_pullable_via_the_upstream_with_the_mirror_failure_shown() {
    let upstream = Registry::start();
    upstream.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let mirror = format!("127.0.0.1:{}", closed_port());
    let hosts = ctrd.write_hosts_toml(
        &upstream.addr().to_string(),
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            upstream.addr()
        ),
    );
    let image = format!("{}/team/app:1.0", upstream.addr());

    for via_runtime in [false, true] {
        let extra: &[&str] = if via_runtime { &["--via-runtime"] } else { &[] };
        let (code, report) = diagnose(&ctrd, extra, &image);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["pullable"], true, "{report}");
        let endpoints = report["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints[0]["endpoint"], format!("http://{mirror}"));
        assert_eq!(endpoints[0]["role"], "mirror");
        assert_eq!(endpoints[0]["source"], path_str(&hosts));
        // The report names the rules of the containerd that answered, at its version.
        assert!(
            endpoints[0]["rules"]
                .as_str()
                .is_some_and(|r| r.starts_with("containerd 1.")),
            "{report}"
        );
        assert!(
            checks(&endpoints[0]).contains(&("tcp".into(), false, "tcp_refused".into())),
            "{report}"
        );
        assert_eq!(
            endpoints[1]["endpoint"],
            format!("http://{}", upstream.addr())
        );
        assert_eq!(endpoints[1]["role"], "upstream");
        assert_eq!(endpoints[1]["source"], path_str(&hosts));
        assert!(
            checks(&endpoints[1]).contains(&("manifest".into(), true, String::new())),
            "{report}"
        );
        assert!(
            report["summary"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("pullable via http://{}", upstream.addr())),
            "{report}"
        );
        let runtime = check_named(&endpoints[1], "runtime");
        assert_eq!(runtime.is_some(), via_runtime, "{report}");
        if let Some(runtime) = runtime {
            assert_eq!(runtime["ok"], true, "{report}");
        }
    }
}

#[test]
fn mirror_up_is_pullable_via_the_mirror_and_the_runtime_uses_it() {
    let mirror = Registry::start();
    mirror.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let upstream = format!("127.0.0.1:{}", closed_port());
    let hosts = ctrd.write_hosts_toml(
        &upstream,
        &format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.addr()
        ),
    );
    let image = format!("{upstream}/team/app:1.0");
    let (code, report) = diagnose(&ctrd, &["--via-runtime"], &image);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["pullable"], true, "{report}");
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(
        endpoints[0]["endpoint"],
        format!("http://{}", mirror.addr())
    );
    assert_eq!(endpoints[0]["role"], "mirror");
    assert_eq!(endpoints[0]["source"], path_str(&hosts));
    assert!(passed(&endpoints[0], &["manifest", "runtime"]), "{report}");
    // containerd stops at the mirror that served the manifest, and so does diagnose: the
    // upstream (down here) is listed, not tried.
    assert_eq!(endpoints[1]["role"], "upstream");
    assert!(checks(&endpoints[1]).is_empty(), "{report}");
    assert!(
        endpoints[1]["not_tried"]
            .as_str()
            .is_some_and(|why| why.contains(&format!("pullable via http://{}", mirror.addr()))),
        "{report}"
    );
    // containerd itself went to the mirror for the upstream's name, and pullwatch asked it the
    // same way: the mirror is told which registry the image is from (`?ns=`).
    let log = mirror.access_log();
    let asked_for_upstream = |agent: &str| {
        log.iter().any(|r| {
            r.user_agent.starts_with(agent)
                && r.method == "HEAD"
                && r.path
                    == format!(
                        "/v2/team/app/manifests/1.0?ns={}",
                        upstream.replace(':', "%3A")
                    )
        })
    };
    assert!(asked_for_upstream("containerd/"), "{log:?}");
    assert!(asked_for_upstream("pullwatch/"), "{log:?}");
}

/// A mirror whose API root is not `/v2`: with `override_path` the host's path is the root, without
/// it containerd appends `/v2`. pullwatch's `/v2/` GET, manifest HEAD and tags/list go under that
/// root, where containerd's own pull goes too.
#[test]
fn a_mirror_with_its_own_api_root_is_asked_under_it_like_containerd_does() {
    let registry = Registry::start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    struct Case {
        host_path: &'static str,
        override_path: bool,
        root: &'static str,
    }
    let cases = [
        Case {
            host_path: "/v2/dockerhub",
            override_path: true,
            root: "/v2/dockerhub",
        },
        Case {
            host_path: "/cache",
            override_path: false,
            root: "/cache/v2",
        },
    ];
    for case in cases {
        let mirror = mirror_under(case.root, registry.addr());
        let upstream = format!("127.0.0.1:{}", closed_port());
        ctrd.write_hosts_toml(
            &upstream,
            &format!(
                "server = \"http://{upstream}\"\n\n[host.\"http://{}{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = {}\n",
                mirror.addr(),
                case.host_path,
                case.override_path
            ),
        );

        let (code, report) = diagnose(
            &ctrd,
            &["--via-runtime"],
            &format!("{upstream}/team/app:1.0"),
        );
        assert_eq!(code, 0, "{}: {report}", case.root);
        let endpoint = &report["endpoints"][0];
        assert_eq!(endpoint["endpoint"], format!("http://{}", mirror.addr()));
        assert!(passed(endpoint, &["manifest", "runtime"]), "{report}");
        let http = check_named(endpoint, "http").expect("http check");
        assert!(
            http["detail"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("GET {}/ answered 200 OK", case.root)),
            "{report}"
        );

        // A missing tag: the tags are listed under the same root, and the nearest one named.
        let (code, report) = diagnose(&ctrd, &[], &format!("{upstream}/team/app:1.1"));
        assert_eq!(code, 1, "{report}");
        let manifest = check_named(&report["endpoints"][0], "manifest").expect("manifest check");
        assert_eq!(manifest["reason"], "manifest_unknown", "{report}");
        assert!(
            manifest["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("nearest tags: 1.0"),
            "{report}"
        );

        let asked = mirror.requests();
        let by = |agent: &str, method: &str, path: &str| {
            asked.iter().any(|r| {
                r.header("user-agent")
                    .unwrap_or_default()
                    .starts_with(agent)
                    && r.method == method
                    && r.path.starts_with(path)
            })
        };
        let root = case.root;
        assert!(by("pullwatch/", "GET", &format!("{root}/")), "{asked:?}");
        assert!(
            by(
                "pullwatch/",
                "HEAD",
                &format!("{root}/team/app/manifests/1.0")
            ),
            "{asked:?}"
        );
        assert!(
            by("pullwatch/", "GET", &format!("{root}/team/app/tags/list")),
            "{asked:?}"
        );
        assert!(
            by(
                "containerd/",
                "HEAD",
                &format!("{root}/team/app/manifests/1.0")
            ),
            "containerd resolved there too: {asked:?}"
        );
        assert!(
            asked
                .iter()
                .all(|r| r.path.starts_with(&format!("{root}/"))),
            "nothing asked outside the root: {asked:?}"
        );
    }
}

/// A certificate the node does not trust fails pullwatch and containerd alike; a hosts.toml `ca`
/// makes it verify, and `skip_verify = true` lets it through unverified, which the tls check says.
#[test]
fn a_hosts_toml_ca_or_skip_verify_makes_tls_pass_for_pullwatch_and_for_containerd() {
    let tls = TlsFixtures::for_host("registry.test");
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let name = registry.addr().to_string();
    let image = format!("{name}/team/app:1.0");
    let server = format!("server = \"https://{name}\"\n");

    // Without either, both fail the same way.
    ctrd.write_hosts_toml(&name, &format!("{server}[host]\n"));
    let (code, report) = diagnose(&ctrd, &["--via-runtime"], &image);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["reason"], "tls_unknown_authority", "{report}");
    let endpoint = &report["endpoints"][0];
    assert_eq!(endpoint["endpoint"], format!("https://{name}"));
    assert!(
        checks(endpoint).contains(&("tls".into(), false, "tls_unknown_authority".into())),
        "{report}"
    );
    let runtime = check_named(endpoint, "runtime").expect("runtime check");
    assert_eq!(runtime["reason"], "tls_unknown_authority", "{report}");

    // With either, the image is pullable, by pullwatch and by containerd.
    struct Case {
        setting: String,
        tls_detail: &'static str,
    }
    let cases = [
        Case {
            setting: format!("ca = \"{}\"", tls.ca.cert_path_str()),
            tls_detail: ", verified; leaf CN=registry.test",
        },
        Case {
            setting: "skip_verify = true".into(),
            tls_detail: ", NOT verified (skip_verify); leaf CN=registry.test",
        },
    ];
    for case in cases {
        let hosts = ctrd.write_hosts_toml(&name, &format!("{server}{}\n[host]\n", case.setting));
        let (code, report) = diagnose(&ctrd, &["--via-runtime"], &image);
        assert_eq!(code, 0, "{}: {report}", case.setting);
        let endpoint = &report["endpoints"][0];
        assert_eq!(endpoint["source"], path_str(&hosts));
        let tls_check = check_named(endpoint, "tls").expect("tls check");
        assert_eq!(tls_check["ok"], true, "{}: {report}", case.setting);
        assert!(
            detail(Some(tls_check)).contains(case.tls_detail),
            "{}: {report}",
            case.setting
        );
        assert_eq!(
            check_named(endpoint, "runtime").expect("runtime check")["ok"],
            true,
            "{}: {report}",
            case.setting
        );
    }
}

/// A registry that requires a client certificate (distribution's `http.tls.clientcas`): every form
/// of hosts.toml `client` containerd accepts gets pullwatch and containerd through; without one,
/// with one the registry does not trust, or with a cert and key listed as two lone files, both
/// fail, and pullwatch's tls check says what the registry asked for.
#[test]
fn a_hosts_toml_client_certificate_passes_mutual_tls_for_pullwatch_and_for_containerd() {
    let tls = TlsFixtures::for_host("registry.test");
    let clients = TestCa::new("pullwatch client CA");
    let client = clients.client_cert("node-1");
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .client_cas(clients.cert_path())
        .start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let name = registry.addr().to_string();
    let image = format!("{name}/team/app:1.0");
    let server = format!(
        "server = \"https://{name}\"\nca = \"{}\"\n",
        tls.ca.cert_path_str()
    );
    let with_client = |client_line: &str| {
        let hosts = ctrd.write_hosts_toml(&name, &format!("{server}{client_line}\n[host]\n"));
        let (code, report) = diagnose(&ctrd, &["--via-runtime"], &image);
        (hosts, code, report)
    };

    // No client certificate: the registry refuses both, and pullwatch says why at the tls check.
    let (_, code, report) = with_client("");
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["reason"], "tls_handshake", "{report}");
    let endpoint = &report["endpoints"][0];
    assert_eq!(
        checks(endpoint)
            .iter()
            .map(|(check, ok, reason)| (check.as_str(), *ok, reason.as_str()))
            .collect::<Vec<_>>(),
        [
            ("dns", true, ""),
            ("tcp", true, ""),
            ("tls", false, "tls_handshake"),
            ("runtime", false, "tls_handshake"),
        ],
        "{report}"
    );
    let tls_detail = detail(check_named(endpoint, "tls"));
    assert!(
        tls_detail.contains(
            "requires a client certificate issued by CN=pullwatch client CA (mutual TLS)"
        ) && tls_detail.contains("none is configured for this endpoint")
            && tls_detail.contains("`client` in containerd's hosts.toml"),
        "{report}"
    );
    assert!(
        detail(check_named(endpoint, "runtime")).contains("tls: bad certificate"),
        "{report}"
    );
    assert!(
        report["fix"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("https://{name}")),
        "{report}"
    );

    // Each form containerd reads: a [cert, key] pair, one file holding both (relative to the
    // host directory), a list of such files.
    let host_dir = ctrd.certs_dir().join(&name);
    std::fs::create_dir_all(&host_dir).expect("create certs.d/<registry>");
    std::fs::copy(&client.combined_path, host_dir.join("node.pem")).expect("copy client.pem");
    for form in [
        format!(
            "client = [[\"{}\", \"{}\"]]",
            path_str(&client.cert_path),
            path_str(&client.key_path)
        ),
        "client = \"node.pem\"".to_string(),
        format!("client = [\"{}\"]", path_str(&client.combined_path)),
    ] {
        let (hosts, code, report) = with_client(&form);
        assert_eq!(code, 0, "{form}: {report}");
        assert_eq!(report["pullable"], true, "{form}: {report}");
        let endpoint = &report["endpoints"][0];
        assert_eq!(endpoint["source"], path_str(&hosts));
        assert!(
            passed(endpoint, &["manifest", "runtime"]),
            "{form}: {report}"
        );
        assert!(
            detail(check_named(endpoint, "tls")).contains(", verified;"),
            "{form}: {report}"
        );
    }

    // A certificate from a CA the registry does not name.
    let rogue = TestCa::new("pullwatch rogue CA").client_cert("node-2");
    let (_, code, report) = with_client(&format!(
        "client = [[\"{}\", \"{}\"]]",
        path_str(&rogue.cert_path),
        path_str(&rogue.key_path)
    ));
    assert_eq!(code, 1, "{report}");
    let endpoint = &report["endpoints"][0];
    let tls_check = check_named(endpoint, "tls").expect("tls check");
    assert_eq!(tls_check["reason"], "tls_handshake", "{report}");
    // Go's TLS client sends no certificate the server's named CAs did not issue, and neither
    // does pullwatch: the evidence says which CA it wanted and why nothing was sent.
    assert!(
        detail(Some(tls_check)).contains("requires a client certificate issued by CN=pullwatch client CA")
            && detail(Some(tls_check)).contains(
                "none of the 1 configured for this endpoint is issued by a CA it accepts, so none is sent"
            ),
        "{report}"
    );
    assert_eq!(
        check_named(endpoint, "runtime").expect("runtime check")["ok"],
        false,
        "{report}"
    );

    // Several pairs: Go's TLS client (containerd) presents the first one issued by a CA the
    // registry names in its request, not the first listed; pullwatch presents the same one.
    let pair = |c: &testkit::certs::ClientCert| {
        format!(
            "[\"{}\", \"{}\"]",
            path_str(&c.cert_path),
            path_str(&c.key_path)
        )
    };
    let (_, code, report) = with_client(&format!("client = [{}, {}]", pair(&rogue), pair(&client)));
    assert_eq!(code, 0, "{report}");
    assert!(
        passed(&report["endpoints"][0], &["manifest", "runtime"]),
        "{report}"
    );
    // None of them from an accepted CA: none is sent, by either.
    let other = TestCa::new("pullwatch other CA").client_cert("node-3");
    let (_, code, report) = with_client(&format!("client = [{}, {}]", pair(&rogue), pair(&other)));
    assert_eq!(code, 1, "{report}");
    let endpoint = &report["endpoints"][0];
    assert!(
        detail(check_named(endpoint, "tls")).contains(
            "none of the 2 configured for this endpoint is issued by a CA it accepts, so none is sent"
        ),
        "{report}"
    );
    assert_eq!(
        check_named(endpoint, "runtime").expect("runtime check")["ok"],
        false,
        "{report}"
    );

    // Two lone files: containerd reads each as certificate and key together, and fails.
    let (_, code, report) = with_client(&format!(
        "client = [\"{}\", \"{}\"]",
        path_str(&client.cert_path),
        path_str(&client.key_path)
    ));
    assert_eq!(code, 1, "{report}");
    let endpoint = &report["endpoints"][0];
    let tls_check = check_named(endpoint, "tls").expect("tls check");
    assert_eq!(tls_check["ok"], false, "{report}");
    assert!(
        detail(Some(tls_check)).contains(&path_str(&client.cert_path))
            && detail(Some(tls_check)).contains("no PEM private key")
            && detail(Some(tls_check)).contains("client = [[\"cert.pem\", \"key.pem\"]]"),
        "{report}"
    );
    assert!(
        detail(check_named(endpoint, "runtime")).contains("failed to load X509 key pair"),
        "{report}"
    );
}

/// containerd 1.6 ignores a hosts.toml without a `[host]` table (containerd#10027) and talks plain
/// HTTP to a localhost registry; pullwatch, knowing the version, says so and follows it there.
#[test]
fn a_hosts_toml_that_containerd_ignores_is_reported_and_followed_like_containerd() {
    let tls = TlsFixtures::for_host("registry.test");
    let registry = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let name = registry.addr().to_string();
    let hosts = ctrd.write_hosts_toml(
        &name,
        &format!(
            "server = \"https://{name}\"\nca = \"{}\"\n",
            tls.ca.cert_path_str()
        ),
    );
    let (code, report) = diagnose(&ctrd, &["--via-runtime"], &format!("{name}/team/app:1.0"));
    assert_eq!(code, 1, "{report}");
    let summary = report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&path_str(&hosts)) && summary.contains("containerd#10027"),
        "{report}"
    );
    let endpoint = &report["endpoints"][0];
    assert_eq!(endpoint["endpoint"], format!("http://{name}"), "{report}");
    // containerd fails the same way: plain HTTP to the TLS port.
    let runtime = check_named(endpoint, "runtime").expect("runtime check");
    assert_eq!(runtime["reason"], "tls_handshake", "{report}");
    assert!(
        runtime["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("400 Bad Request"),
        "{report}"
    );
}

#[test]
fn a_malformed_hosts_toml_is_reported_with_its_line_and_the_route_falls_back() {
    let registry = Registry::start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let name = registry.addr().to_string();
    let hosts = ctrd.write_hosts_toml(
        &name,
        "[host.\"http://mirror.invalid\"]\n  capabilities = [\"pull\", \"teleport\"]\n",
    );
    let (code, report) = diagnose(&ctrd, &["--via-runtime"], &format!("{name}/team/app:1.0"));
    assert_eq!(code, 0, "{report}");
    let summary = report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!(
            "{}:2: unknown capability \"teleport\"",
            path_str(&hosts)
        )),
        "{report}"
    );
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{report}");
    assert_eq!(endpoints[0]["endpoint"], format!("http://{name}"));
    assert_eq!(
        check_named(&endpoints[0], "runtime").expect("runtime check")["ok"],
        true,
        "containerd fell back the same way: {report}"
    );
}

/// The runtime sits behind a proxy that is down; pullwatch's own checks pass, the real pull does
/// not: `--via-runtime` says so, with the runtime's reason.
#[test]
fn via_runtime_catches_what_only_the_runtime_sees() {
    let ns = Netns::new();
    let registry = Registry::builder().listen_ip(ns.host_ip()).start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::builder()
        .env("HTTP_PROXY", &format!("http://127.0.0.1:{}", closed_port()))
        .start();
    let name = registry.addr().to_string();
    ctrd.write_hosts_toml(&name, &format!("server = \"http://{name}\"\n[host]\n"));
    let image = format!("{name}/team/app:1.0");

    let (code, report) = diagnose(&ctrd, &[], &image);
    assert_eq!(code, 0, "without the runtime, it looks pullable: {report}");

    let (code, report) = diagnose(&ctrd, &["--via-runtime"], &image);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["pullable"], false);
    assert_eq!(report["reason"], "proxy_error", "{report}");
    let summary = report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("the runtime could not pull it") && summary.contains("proxyconnect"),
        "{report}"
    );
    let endpoint = &report["endpoints"][0];
    let runtime = check_named(endpoint, "runtime").expect("runtime check");
    assert_eq!(runtime["ok"], false);
    assert_eq!(runtime["reason"], "proxy_error");
    assert!(
        report["fix"].as_str().unwrap_or_default().contains("proxy"),
        "{report}"
    );
}

#[test]
fn via_runtime_without_a_runtime_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    for well_known in pullwatch::config::RUNTIME_SOCKETS {
        assert!(
            !Path::new(well_known).exists(),
            "this test needs a machine without a system runtime, but {well_known} exists"
        );
    }
    let out = Pullwatch::new()
        .args(["diagnose", "--via-runtime", "registry.invalid/app:1"])
        .run();
    assert_eq!(out.exit_code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("--runtime-endpoint"), "{}", out.stderr);

    // A named socket that is dead: the pull fails as a runtime error, not a crash.
    let (code, reports) = Pullwatch::new()
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", socket.display()),
            "--timeout",
            "2s",
        ])
        .diagnose_json(["--via-runtime", "127.0.0.1:1/app:1"]);
    assert_eq!(code, 1);
    let runtime = reports[0]["endpoints"][0]["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == "runtime"))
        .cloned()
        .expect("runtime check");
    assert_eq!(runtime["ok"], false);
    assert!(
        runtime["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("unavailable"),
        "{runtime}"
    );
}

#[test]
fn cri_o_registries_conf_routes_mirrors_and_blocks() {
    let mirror = Registry::start();
    mirror.push_image("team/app", "1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("registries.conf");
    let upstream = format!("127.0.0.1:{}", closed_port());
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{upstream}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n\n[[registry]]\nlocation = \"blocked.invalid\"\nblocked = true\n",
            mirror.addr()
        ),
    )
    .expect("write registries.conf");
    let common = [
        "--registries-conf".to_string(),
        conf.display().to_string(),
        "--containerd-certs-dir".to_string(),
        dir.path().join("certs.d").display().to_string(),
        "--timeout".to_string(),
        "5s".to_string(),
    ];

    let (code, reports) = Pullwatch::new()
        .args(common.clone())
        .diagnose_json([format!("{upstream}/team/app:1.0")]);
    let report = &reports[0];
    assert_eq!(code, 0, "{report}");
    let urls: Vec<&str> = report["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap_or_default())
        .collect();
    // insecure: HTTPS without verification first, then plain HTTP, as containers/image does.
    assert_eq!(
        urls,
        [
            format!("https://{}", mirror.addr()),
            format!("http://{}", mirror.addr()),
            format!("https://{upstream}"),
            format!("http://{upstream}"),
        ],
        "{report}"
    );
    assert_eq!(report["endpoints"][1]["source"], path_str(&conf));
    assert!(
        report["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pullable via http://{}", mirror.addr())),
        "{report}"
    );

    let (code, reports) = Pullwatch::new()
        .args(common)
        .diagnose_json(["blocked.invalid/team/app:1.0"]);
    assert_eq!(code, 1);
    assert_eq!(reports[0]["reason"], "blocked", "{}", reports[0]);
    assert!(
        reports[0]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&path_str(&conf)),
        "{}",
        reports[0]
    );
    assert_eq!(reports[0]["endpoints"].as_array().map(Vec::len), Some(0));
}

/// CRI-O asks the location for the image's name rewritten under the prefix: with prefix
/// `rewrite.test/foo` and location `<registry>/bar`, `rewrite.test/foo/app` is `bar/app` there.
#[test]
fn cri_o_asks_the_location_for_the_rewritten_repository() {
    let registry = Registry::start();
    registry.push_image("bar/app", "1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"rewrite.test/foo\"\nlocation = \"{}/bar\"\ninsecure = true\n",
            registry.addr()
        ),
    )
    .expect("write registries.conf");
    let (code, reports) = Pullwatch::new()
        .args([
            "--registries-conf".to_string(),
            conf.display().to_string(),
            "--containerd-certs-dir".to_string(),
            dir.path().join("certs.d").display().to_string(),
            "--timeout".to_string(),
            "5s".to_string(),
        ])
        .diagnose_json(["rewrite.test/foo/app:1.0", "rewrite.test/foo/gone:1.0"]);
    assert_eq!(code, 1, "{reports:?}");
    let found = &reports[0];
    assert_eq!(found["pullable"], true, "{found}");
    assert!(
        found["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pullable via http://{}", registry.addr())),
        "{found}"
    );
    let gone = &reports[1];
    let manifest = check_named(&gone["endpoints"][1], "manifest").expect("manifest check");
    assert_eq!(manifest["reason"], "repository_unknown", "{gone}");
    assert!(
        manifest["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("repository bar/gone not found"),
        "{gone}"
    );
    let log = registry.access_log();
    assert!(
        log.iter().any(|r| r.method == "HEAD"
            && r.path == "/v2/bar/app/manifests/1.0"
            && r.status == 200),
        "{log:?}"
    );
    assert!(
        log.iter().all(|r| !r.path.contains("/foo/")),
        "the prefix's own namespace is never asked: {log:?}"
    );
}

/// registries.conf `insecure = true` is containers/image's skip-verify-and-allow-HTTP: an HTTPS
/// registry with a certificate from an unknown CA passes over HTTPS, reported as not verified;
/// without it, the same registry is `tls_unknown_authority`.
#[test]
fn cri_o_insecure_skips_verification_over_https() {
    let tls = TlsFixtures::for_host("registry.test");
    let registry = Registry::builder()
        .tls(&tls.unknown_ca.cert_path, &tls.unknown_ca.key_path)
        .start();
    registry.push_image("team/app", "1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("registries.conf");
    let name = registry.addr().to_string();
    let diagnose_with = |insecure: bool| {
        std::fs::write(
            &conf,
            format!("[[registry]]\nlocation = \"{name}\"\ninsecure = {insecure}\n"),
        )
        .expect("write registries.conf");
        let (code, mut reports) = Pullwatch::new()
            .args([
                "--registries-conf".to_string(),
                conf.display().to_string(),
                "--containerd-certs-dir".to_string(),
                dir.path().join("certs.d").display().to_string(),
                "--timeout".to_string(),
                "5s".to_string(),
            ])
            .diagnose_json([format!("{name}/team/app:1.0")]);
        (code, reports.remove(0))
    };

    let (code, report) = diagnose_with(false);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["reason"], "tls_unknown_authority", "{report}");
    assert_eq!(report["endpoints"].as_array().map(Vec::len), Some(1));

    let (code, report) = diagnose_with(true);
    assert_eq!(code, 0, "{report}");
    let endpoint = &report["endpoints"][0];
    assert_eq!(endpoint["endpoint"], format!("https://{name}"), "{report}");
    assert_eq!(endpoint["source"], path_str(&conf));
    assert!(passed(endpoint, &["manifest"]), "{report}");
    assert!(
        detail(check_named(endpoint, "tls")).contains("NOT verified (skip_verify)"),
        "{report}"
    );
    assert!(
        report["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pullable via https://{name}")),
        "{report}"
    );
}

/// hosts.toml `header` goes with every request to its host, from pullwatch as from containerd
/// (the mirror sees both), and `targets` names it (never its value) with the `dial_timeout`.
#[test]
fn a_hosts_toml_header_reaches_the_mirror_like_containerds() {
    let registry = Registry::start();
    registry.push_image("team/app", "1.0");
    let ctrd = Containerd::start();
    let mirror = mirror_under("/v2", registry.addr());
    let upstream = format!("127.0.0.1:{}", closed_port());
    ctrd.write_hosts_toml(
        &upstream,
        &format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"3s\"\n  [host.\"http://{}\".header]\n    x-pullwatch-test = [\"secret-value-7\"]\n",
            mirror.addr(),
            mirror.addr()
        ),
    );
    let (code, report) = diagnose(
        &ctrd,
        &["--via-runtime"],
        &format!("{upstream}/team/app:1.0"),
    );
    assert_eq!(code, 0, "{report}");
    let requests = mirror.requests();
    let with_header = |agent: &str| {
        requests.iter().any(|r| {
            r.header("x-pullwatch-test") == Some("secret-value-7")
                && r.header("user-agent").is_some_and(|ua| ua.contains(agent))
        })
    };
    assert!(
        with_header("pullwatch"),
        "pullwatch sent no header: {requests:?}"
    );
    assert!(
        with_header("containerd"),
        "containerd sent no header: {requests:?}"
    );
    let listed = Pullwatch::new()
        .args([
            "--runtime-endpoint",
            &ctrd.endpoint(),
            "--containerd-certs-dir",
            ctrd.certs_dir_str(),
            "targets",
            "--registry",
            &upstream,
        ])
        .run();
    assert!(
        listed
            .stdout
            .contains("header x-pullwatch-test  dial_timeout 3s"),
        "{}",
        listed.stdout
    );
    assert!(
        !listed.stdout.contains("secret-value-7"),
        "{}",
        listed.stdout
    );
}
