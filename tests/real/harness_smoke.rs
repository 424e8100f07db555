//! Proves the test harness (the `pullwatch-testkit` crate, `testkit/`) works with real parts (DNS server,
//! registry, certificates, netns firewall, scripted server, process runner) before any
//! pullwatch test relies on it. Nothing here runs pullwatch's own logic.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use testkit::certs::TlsFixtures;
use testkit::dns::{Answer, DnsServer};
use testkit::http::{Client, Trust};
use testkit::image::{Image, Platform};
use testkit::netns::Netns;
use testkit::registry::Registry;
use testkit::scripted::{Response, ScriptedServer};

fn dns_query(server: SocketAddr, name: &str, rtype: RecordType) -> std::io::Result<Message> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    sock.send_to(&msg.to_vec().expect("encode"), server)?;
    let mut buf = [0u8; 2048];
    let (len, _) = sock.recv_from(&mut buf)?;
    Ok(Message::from_vec(&buf[..len]).expect("decode answer"))
}

fn dns_query_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    use std::io::{Read, Write};
    let mut msg = Message::query();
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    let bytes = msg.to_vec().expect("encode");
    let mut s =
        TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("TCP connect to DNS");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .expect("write len");
    s.write_all(&bytes).expect("write query");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("read len");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).expect("read answer");
    Message::from_vec(&buf).expect("decode TCP answer")
}

#[test]
fn dns_server_answers_every_configured_kind() {
    let v4 = Ipv4Addr::new(127, 0, 0, 7);
    let v6 = Ipv6Addr::LOCALHOST;
    let dns = DnsServer::builder()
        .a("registry.test", v4)
        .aaaa("registry.test", v6)
        .nxdomain("gone.test")
        .servfail("broken.test")
        .refused("refused.test")
        .no_addresses("empty.test")
        .silent("blackhole.test")
        .start();
    assert!(
        dns.ip().octets()[..2] == [127, 53],
        "address {} is not 127.53.X.Y",
        dns.ip()
    );
    let conf = std::fs::read_to_string(dns.resolv_conf()).expect("resolv.conf");
    assert_eq!(
        conf,
        format!("nameserver {}\noptions timeout:1 attempts:1\n", dns.ip())
    );

    let a = dns_query(dns.addr(), "Registry.Test.", RecordType::A).expect("A answer");
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].data, RData::A(v4.into()));
    let aaaa = dns_query(dns.addr(), "registry.test.", RecordType::AAAA).expect("AAAA answer");
    assert_eq!(aaaa.answers[0].data, RData::AAAA(v6.into()));

    for (name, rcode) in [
        ("gone.test.", ResponseCode::NXDomain),
        ("never-configured.test.", ResponseCode::NXDomain),
        ("broken.test.", ResponseCode::ServFail),
        ("refused.test.", ResponseCode::Refused),
        ("empty.test.", ResponseCode::NoError),
    ] {
        let m =
            dns_query(dns.addr(), name, RecordType::A).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.metadata.response_code, rcode, "{name}");
        assert!(m.answers.is_empty(), "{name} has answers");
    }

    let started = Instant::now();
    let err =
        dns_query(dns.addr(), "blackhole.test.", RecordType::A).expect_err("silent name answered");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));

    let tcp = dns_query_tcp(dns.addr(), "registry.test.", RecordType::A);
    assert_eq!(tcp.answers[0].data, RData::A(v4.into()));

    dns.set("registry.test", Answer::ServFail);
    let changed = dns_query(dns.addr(), "registry.test.", RecordType::A).expect("answer");
    assert_eq!(changed.metadata.response_code, ResponseCode::ServFail);

    assert_eq!(dns.queries("registry.test"), 4);
    assert_eq!(dns.queries("blackhole.test"), 1);
    assert_eq!(dns.query_log().iter().filter(|q| q.tcp).count(), 1);
}

#[test]
fn two_dns_servers_get_distinct_addresses() {
    let one = DnsServer::builder().start();
    let two = DnsServer::builder().start();
    assert_ne!(one.ip(), two.ip());
}

#[test]
fn tls_fixtures_produce_the_four_conditions() {
    let tls = TlsFixtures::for_host("registry.test");
    let ca = Trust::CaFile(tls.ca.cert_path().to_owned());
    let serve = |leaf: &testkit::certs::Leaf| {
        ScriptedServer::builder()
            .route("GET", "/v2/", Response::registry_v2())
            .tls(&leaf.cert_path, &leaf.key_path)
            .start()
    };
    let get =
        |srv: &ScriptedServer, name: &str| Client::https(srv.addr(), name, ca.clone()).get("/v2/");

    let valid = serve(&tls.valid);
    assert_eq!(
        get(&valid, "registry.test")
            .expect("valid cert by name")
            .status,
        200
    );
    assert_eq!(
        get(&valid, "127.0.0.1").expect("valid cert by IP").status,
        200
    );

    let expired = get(&serve(&tls.expired), "registry.test").expect_err("expired cert accepted");
    assert!(expired.to_string().contains("expired"), "{expired}");
    let wrong =
        get(&serve(&tls.wrong_name), "registry.test").expect_err("wrong-name cert accepted");
    assert!(wrong.to_string().contains("not valid for name"), "{wrong}");
    let unknown = get(&serve(&tls.unknown_ca), "registry.test").expect_err("unknown CA accepted");
    assert!(unknown.to_string().contains("UnknownIssuer"), "{unknown}");
}

#[test]
fn registry_serves_v2_over_tls_with_basic_auth() {
    let tls = TlsFixtures::for_host("registry.test");
    let reg = Registry::builder()
        .tls(&tls.valid.cert_path, &tls.valid.key_path)
        .htpasswd("alice", "s3cret")
        .start();
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let anonymous = Client::https(
        reg.addr(),
        "registry.test",
        Trust::CaFile(tls.ca.cert_path().to_owned()),
    );
    let denied = anonymous.get("/v2/").expect("GET /v2/ anonymously");
    assert_eq!(denied.status, 401);
    assert!(
        denied
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{denied:?}"
    );
    let allowed = anonymous
        .clone()
        .basic_auth("alice", "s3cret")
        .get("/v2/")
        .expect("GET /v2/ with creds");
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // curl, as an independent client, agrees.
    let curl = testkit::run_tool(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            tls.ca.cert_path_str(),
            "--resolve",
            &format!("registry.test:{}:127.0.0.1", reg.port()),
            &format!("https://registry.test:{}/v2/", reg.port()),
        ],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(curl, "401");

    let pushed = reg.push_image("team/app", "1.0");
    let manifest = reg
        .client()
        .request(
            "GET",
            "/v2/team/app/manifests/1.0",
            &[("Accept", &pushed.media_type)],
            &[],
        )
        .expect("GET manifest");
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
    assert!(
        reg.access_log()
            .iter()
            .any(|e| e.method == "GET" && e.path == "/v2/" && e.status == 401)
    );
}

#[test]
fn push_single_manifests_and_indexes() {
    let reg = Registry::start();
    let client = reg.client();
    let head = |repo: &str, reference: &str, accept: &str| {
        client
            .request(
                "HEAD",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Accept", accept)],
                &[],
            )
            .expect("HEAD manifest")
    };

    let oci = reg.push_image("lib/oci", "v1");
    assert_eq!(oci.manifests, vec![(Platform::host(), oci.digest.clone())]);
    let resp = head("lib/oci", "v1", &oci.media_type);
    assert_eq!(
        (resp.status, resp.header("docker-content-digest")),
        (200, Some(oci.digest.as_str()))
    );

    let docker = reg.push(
        "lib/docker",
        "v1",
        &Image::single(Platform::host()).docker(),
    );
    assert_eq!(
        docker.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(head("lib/docker", "v1", &docker.media_type).status, 200);

    // An index lacking this machine's platform (for platform_mismatch).
    let index = reg.push(
        "lib/multi",
        "v1",
        &Image::index(&["linux/s390x", "linux/arm/v7"]),
    );
    let got = client
        .request(
            "GET",
            "/v2/lib/multi/manifests/v1",
            &[("Accept", &index.media_type)],
            &[],
        )
        .expect("GET index");
    assert_eq!(
        got.header("docker-content-digest"),
        Some(index.digest.as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("index JSON");
    let platforms: Vec<String> = body["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or(""),
                m["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/s390x", "linux/arm"]);
    for (_, digest) in &index.manifests {
        assert_eq!(
            head(
                "lib/multi",
                digest,
                "application/vnd.oci.image.manifest.v1+json"
            )
            .status,
            200
        );
    }

    let list = reg.push(
        "lib/list",
        "v1",
        &Image::index(&["linux/amd64", "linux/arm64"]).docker(),
    );
    assert_eq!(
        head("lib/list", "v1", &list.media_type).header("docker-content-digest"),
        Some(list.digest.as_str())
    );

    assert_eq!(head("lib/oci", "nope", &oci.media_type).status, 404);
    assert!(
        reg.access_log().iter().any(|e| e.method == "HEAD"
            && e.path == "/v2/lib/oci/manifests/nope"
            && e.status == 404)
    );
}

#[test]
fn netns_firewall_drops_resets_and_rejects_unreachable() {
    let ns = Netns::new();
    let name = ns.name().to_owned();
    assert!(
        ns.exec_ok("ip", &["-4", "addr"], None)
            .contains(&ns.ip().to_string())
    );

    let started = Instant::now();
    let dropped = TcpStream::connect_timeout(&ns.drop_addr(), Duration::from_millis(800))
        .expect_err("dropped port connected");
    assert_eq!(dropped.kind(), ErrorKind::TimedOut, "{dropped}");
    assert!(started.elapsed() >= Duration::from_millis(700));

    let reset = TcpStream::connect_timeout(&ns.reset_addr(), Duration::from_secs(3))
        .expect_err("reset port connected");
    assert_eq!(reset.kind(), ErrorKind::ConnectionRefused, "{reset}");

    let unreachable = TcpStream::connect_timeout(&ns.unreachable_addr(), Duration::from_secs(3))
        .expect_err("unreachable port connected");
    assert_eq!(
        unreachable.kind(),
        ErrorKind::HostUnreachable,
        "{unreachable}"
    );

    // Servers on the host end of the veth are reachable from inside the namespace.
    let reg = Registry::builder().listen_ip(ns.host_ip()).start();
    let code = ns.exec_ok(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}/v2/", reg.url()),
        ],
        None,
    );
    assert_eq!(code, "200");
    let dns = DnsServer::builder()
        .a("x.test", Ipv4Addr::LOCALHOST)
        .listen_ip(ns.host_ip())
        .start();
    let answer = dns_query(dns.addr(), "x.test.", RecordType::A).expect("DNS on the veth");
    assert_eq!(answer.answers.len(), 1);
    drop((reg, dns));

    // The runner can put a process inside the namespace.
    let out = testkit::cli::Pullwatch::new()
        .in_netns(&ns)
        .arg("--help")
        .timeout(Duration::from_secs(20))
        .run();
    assert!(
        out.code.is_some(),
        "pullwatch died from a signal: {}",
        out.stderr
    );

    drop(ns);
    let list = testkit::run_tool("ip", &["netns", "list"], None, Duration::from_secs(10));
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{name} still exists:\n{list}"
    );
}

#[test]
fn scripted_server_answers_routes_and_records_requests() {
    let srv = ScriptedServer::builder()
        .route("GET", "/v2/", Response::new(503).header("Retry-After", "1"))
        .route(
            "GET",
            "/v2/app/",
            Response::new(429).header("RateLimit-Remaining", "0;w=21600"),
        )
        .route_fn("GET", "/token", |req| {
            Response::new(200).json(&serde_json::json!({ "token": req.path.clone() }))
        })
        .start();
    let client = Client::http(srv.addr());
    let r = client.get("/v2/").expect("GET /v2/");
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    assert_eq!(client.get("/v2/app/manifests/1").expect("GET").status, 429);
    let token = client
        .get("/token?scope=repository:app:pull")
        .expect("GET token");
    assert_eq!(
        token.text(),
        r#"{"token":"/token?scope=repository:app:pull"}"#
    );
    assert_eq!(client.get("/other").expect("GET").status, 404);
    let paths: Vec<String> = srv.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v2/",
            "/v2/app/manifests/1",
            "/token?scope=repository:app:pull",
            "/other"
        ]
    );
    assert_eq!(
        srv.requests()[0].header("user-agent"),
        Some("pullwatch-test-harness")
    );

    let proxy = ScriptedServer::refusing_proxy();
    let out = testkit::cli::run_bounded(
        std::process::Command::new("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--proxy",
            &proxy.url(),
            "https://registry.test:5000/v2/",
        ]),
        None,
        Duration::from_secs(20),
    )
    .expect("run curl");
    assert_eq!(out.stdout, "403", "curl: {}", out.stderr);
    assert_eq!(proxy.requests()[0].method, "CONNECT");
    assert_eq!(proxy.requests()[0].path, "registry.test:5000");
}

#[test]
fn process_runner_kills_what_outlives_its_timeout() {
    let started = Instant::now();
    let err = testkit::cli::run_bounded(
        std::process::Command::new("sleep").arg("30"),
        None,
        Duration::from_millis(300),
    )
    .expect_err("sleep finished early");
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));

    let out = testkit::cli::Pullwatch::new()
        .arg("--help")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .run();
    assert!(
        out.code.is_some(),
        "pullwatch died from a signal: {}",
        out.stderr
    );

    // A background run (as the agent will be) can be signalled and reaped.
    let dns = DnsServer::builder().silent("slow.test").start();
    let mut running = testkit::cli::Pullwatch::new()
        .args(["--resolv-conf", dns.resolv_conf_str(), "--timeout", "30s"])
        .args(["diagnose", "slow.test/app:1"])
        .spawn();
    testkit::wait_for("pullwatch to query DNS", Duration::from_secs(10), || {
        (dns.queries("slow.test") > 0).then_some(())
    });
    assert!(running.is_running(), "stderr: {}", running.stderr());
    let done = running.terminate(Duration::from_secs(10));
    assert_ne!(done.code, Some(0), "{done:?}");
}

/// Set in the child that `watchdogs_clean_up_after_a_killed_test_process` runs of itself.
const HOLDER_ENV: &str = "PULLWATCH_SMOKE_HOLD_RESOURCES";

/// The child's part: hold a netns and a registry, say so on stdout, wait to be SIGKILLed.
fn hold_resources_until_killed() {
    let ns = Netns::new();
    let reg = Registry::start();
    println!("READY {} {}", ns.name(), reg.port());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn watchdogs_clean_up_after_a_killed_test_process() {
    use std::io::BufRead;
    if std::env::var_os(HOLDER_ENV).is_some() {
        return hold_resources_until_killed();
    }
    // The same test, re-run in a child process that plays the holder. Its name in the test
    // binary is its module path without the crate: `harness_smoke::watchdogs_…`.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::watchdogs_clean_up_after_a_killed_test_process");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &name, "--nocapture"])
        .env(HOLDER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn helper");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("READY ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    child.kill().expect("SIGKILL helper");
    child.wait().expect("reap helper");
    let ready = ready.expect("helper did not report READY in 30 s");
    let (ns_name, port) = ready.split_once(' ').expect("READY <netns> <port>");
    let port: u16 = port.parse().expect("port");

    testkit::wait_for(
        "the killed process's netns to be deleted",
        Duration::from_secs(10),
        || {
            let list = testkit::run_tool("ip", &["netns", "list"], None, Duration::from_secs(10));
            (!list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns_name)))
            .then_some(())
        },
    );
    testkit::wait_for(
        "the killed process's registry to stop listening",
        Duration::from_secs(10),
        || {
            TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        },
    );
}
