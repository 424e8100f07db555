//! Config files from hell (issue 13): every file pullwatch is pointed at is read bounded. A
//! device, a FIFO or a huge file given by a flag is a bad flag, refused at once naming the path
//! and what is wrong; inside the runtime's route files it is reported and the checks go on; a
//! docker config near its cap costs memory in proportion to its size.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::cli::Pullwatch;

/// Every run here ends on its own well within this, or the runner kills it and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn mkfifo(path: &Path) {
    testkit::run_tool(
        "mkfifo",
        &[path.to_str().expect("UTF-8 tempdir")],
        None,
        Duration::from_secs(10),
    );
}

/// A file of `len` zero bytes that takes no disk.
fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .expect("sparse file");
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 tempdir")
}

/// `agent` with valid flags but `--kubernetes`, so only the file under test can be wrong.
fn agent_args<'a>(socket: &'a Path, kubernetes: &'a str) -> Vec<&'a str> {
    vec![
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--api-socket",
        text(socket),
        "--node-name",
        "n1",
        "--kubernetes",
        kubernetes,
    ]
}

/// Global flags naming a bad file, and what the error must say.
struct Case<'a> {
    global: Vec<&'a str>,
    want: String,
}

fn case<'a>(global: &[&'a str], want: String) -> Case<'a> {
    Case {
        global: global.to_vec(),
        want,
    }
}

#[test]
fn flag_files_that_are_devices_fifos_or_huge_are_bad_flags_named_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let big_config = dir.path().join("config.json");
    sparse(&big_config, 12 * 1024 * 1024);
    let big_resolv = dir.path().join("resolv.conf");
    sparse(&big_resolv, 2 * 1024 * 1024);
    let fifo = text(&fifo);
    let bin_dir = text(dir.path());
    let socket = dir.path().join("pw.sock");

    let cases = [
        case(
            &["--docker-config", "/dev/zero"],
            "--docker-config /dev/zero: is a character device, not a regular file".into(),
        ),
        case(
            &["--docker-config", fifo],
            format!("--docker-config {fifo}: is a FIFO (named pipe), not a regular file"),
        ),
        case(
            &["--docker-config", text(&big_config)],
            format!(
                "--docker-config {}: 12582912 bytes, more than the 4 MiB a docker config may have",
                big_config.display()
            ),
        ),
        case(
            &["--resolv-conf", fifo],
            format!("--resolv-conf {fifo}: is a FIFO (named pipe), not a regular file"),
        ),
        case(
            &["--resolv-conf", "/dev/zero"],
            "--resolv-conf /dev/zero: is a character device, not a regular file".into(),
        ),
        case(
            &["--resolv-conf", text(&big_resolv)],
            format!(
                "--resolv-conf {}: 2097152 bytes, more than the 1 MiB a resolv.conf may have",
                big_resolv.display()
            ),
        ),
        case(
            &["--ca-file", "/dev/zero"],
            "--ca-file: CA file /dev/zero: is a character device, not a regular file".into(),
        ),
        case(
            &["--ca-file", fifo],
            format!("--ca-file: CA file {fifo}: is a FIFO (named pipe), not a regular file"),
        ),
        case(
            &[
                "--image-credential-provider-config",
                "/dev/zero",
                "--image-credential-provider-bin-dir",
                bin_dir,
            ],
            "--image-credential-provider-config /dev/zero: is a character device, not a regular file"
                .into(),
        ),
    ];
    for case in cases {
        // diagnose: a usage error (2); the agent: bad configuration (64). Both name the file.
        let runs = [
            (vec!["diagnose", "nginx"], 2),
            (agent_args(&socket, "off"), 64),
        ];
        for (command, code) in runs {
            let mut args = case.global.clone();
            args.extend(command);
            let out = Pullwatch::new()
                .args(args.iter().copied())
                .timeout(RUN_LIMIT)
                .run();
            assert_eq!(out.exit_code(), code, "{args:?}\nstderr:\n{}", out.stderr);
            assert!(
                out.stderr.contains(&case.want),
                "{args:?}: want {:?} in:\n{}",
                case.want,
                out.stderr
            );
        }
    }
}

#[test]
fn a_kubeconfig_that_is_a_device_or_a_fifo_is_bad_configuration_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("kubeconfig");
    mkfifo(&fifo);
    let socket = dir.path().join("pw.sock");
    for (kubeconfig, want) in [
        (
            "/dev/zero",
            "/dev/zero: is a character device, not a regular file",
        ),
        (
            text(&fifo),
            "kubeconfig: is a FIFO (named pipe), not a regular file",
        ),
    ] {
        let out = Pullwatch::new()
            .env("KUBECONFIG", kubeconfig)
            .env("KUBERNETES_SERVICE_HOST", "")
            .args(agent_args(&socket, "on"))
            .timeout(RUN_LIMIT)
            .run();
        assert_eq!(out.exit_code(), 64, "stderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains("--kubernetes") && out.stderr.contains(want),
            "want {want:?} in:\n{}",
            out.stderr
        );
    }
}

/// A listener that completes connections and never says a word: the tcp check passes, so the
/// tls check is where a route's `ca` or `client` file is read.
fn silent_registry() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let registry = listener.local_addr().expect("address").to_string();
    (listener, registry)
}

fn hosts_toml(certs: &Path, registry: &str, text: &str) -> PathBuf {
    let dir = certs.join(registry);
    std::fs::create_dir_all(&dir).expect("host dir");
    let file = dir.join("hosts.toml");
    std::fs::write(&file, text).expect("hosts.toml");
    file
}

#[test]
fn route_files_that_are_devices_or_fifos_are_reported_and_the_checks_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs.d");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("resolv.conf");
    let (_ca_listener, ca_registry) = silent_registry();
    hosts_toml(
        &certs,
        &ca_registry,
        &format!(
            "server = \"https://{ca_registry}\"\n[host.\"https://{ca_registry}\"]\ncapabilities = [\"pull\", \"resolve\"]\nca = \"/dev/zero\"\n"
        ),
    );
    let (_client_listener, client_registry) = silent_registry();
    let fifo = dir.path().join("client.pem");
    mkfifo(&fifo);
    hosts_toml(
        &certs,
        &client_registry,
        &format!(
            "server = \"https://{client_registry}\"\n[host.\"https://{client_registry}\"]\ncapabilities = [\"pull\", \"resolve\"]\nclient = \"{}\"\n",
            fifo.display()
        ),
    );
    let out = Pullwatch::new()
        .args([
            "--resolv-conf",
            text(&resolv),
            "--containerd-certs-dir",
            text(&certs),
            "--runtime-version",
            "containerd/1.7.13",
            "--timeout",
            "2s",
            "diagnose",
            "--output",
            "json",
            &format!("{ca_registry}/app:1.0"),
            &format!("{client_registry}/app:1.0"),
        ])
        .timeout(RUN_LIMIT)
        .run();
    assert_eq!(out.exit_code(), 1, "stderr:\n{}", out.stderr);
    let reports = testkit::cli::parse_json_lines(&out);
    let tls = |report: &Value| {
        report["endpoints"][0]["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["check"] == "tls").cloned())
            .unwrap_or_else(|| panic!("no tls check: {report}"))
    };
    let wants = [
        "CA file /dev/zero: is a character device, not a regular file".to_string(),
        format!(
            "client certificate {}: is a FIFO (named pipe), not a regular file",
            fifo.display()
        ),
    ];
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (report, want) in reports.iter().zip(wants) {
        let tls = tls(report);
        assert_eq!(tls["ok"], false, "{report}");
        assert!(
            tls["detail"].as_str().is_some_and(|d| d.contains(&want)),
            "want {want:?}: {report}"
        );
    }

    // A hosts.toml that is a FIFO, a registries.conf that is a device and a drop-in over its
    // cap: each reported by `targets`, which still ends and lists what it can.
    let (_fifo_listener, fifo_registry) = silent_registry();
    let fifo_hosts = certs.join(&fifo_registry).join("hosts.toml");
    std::fs::create_dir_all(fifo_hosts.parent().expect("parent")).expect("host dir");
    mkfifo(&fifo_hosts);
    let out = Pullwatch::new()
        .args([
            "--containerd-certs-dir",
            text(&certs),
            "--runtime-version",
            "containerd/1.7.13",
            "targets",
            "--registry",
            &fifo_registry,
        ])
        .timeout(RUN_LIMIT)
        .run();
    assert_eq!(out.exit_code(), 0, "stderr:\n{}", out.stderr);
    let want = format!(
        "{}: is a FIFO (named pipe), not a regular file",
        fifo_hosts.display()
    );
    assert!(
        out.stdout.contains(&want) || out.stderr.contains(&want),
        "want {want:?}:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, "unqualified-search-registries = [\"docker.io\"]\n").expect("conf");
    let drop_ins = dir.path().join("registries.conf.d");
    std::fs::create_dir(&drop_ins).expect("drop-in dir");
    sparse(&drop_ins.join("10-huge.conf"), 5 * 1024 * 1024);
    mkfifo(&drop_ins.join("20-fifo.conf"));
    for (registries_conf, wants) in [
        (
            "/dev/zero".to_string(),
            vec!["/dev/zero: is a character device, not a regular file".to_string()],
        ),
        (
            text(&conf).to_string(),
            vec![
                "10-huge.conf: 5242880 bytes, more than the 4 MiB a runtime registry config may have"
                    .to_string(),
                "20-fifo.conf: is a FIFO (named pipe), not a regular file".to_string(),
            ],
        ),
    ] {
        let out = Pullwatch::new()
            .args([
                "--registries-conf",
                &registries_conf,
                "--runtime-version",
                "cri-o/1.30.2",
                "targets",
            ])
            .timeout(RUN_LIMIT)
            .run();
        assert_eq!(out.exit_code(), 0, "stderr:\n{}", out.stderr);
        for want in wants {
            assert!(
                out.stdout.contains(&want),
                "want {want:?}:\n{}\n{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

/// The high-water mark of a process's resident memory, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// `diagnose` with `config` loaded, sampled once it is past start-up (its tcp check connected).
fn peak_rss_with(config: &Path, resolv: &Path) -> u64 {
    let (listener, registry) = silent_registry();
    let running = Pullwatch::new()
        .args([
            "--resolv-conf",
            text(resolv),
            "--docker-config",
            text(config),
            "--timeout",
            "20s",
            "diagnose",
            &format!("{registry}/app:1.0"),
        ])
        .spawn();
    listener.set_nonblocking(true).expect("nonblocking");
    let _connection = testkit::wait_for("the tcp check's connection", RUN_LIMIT, || {
        listener.accept().ok()
    });
    let peak = peak_rss_kib(running.pid());
    let _ = running.terminate(RUN_LIMIT);
    peak
}

#[test]
fn a_docker_config_near_its_cap_costs_memory_in_proportion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("resolv.conf");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"auths":{}}"#).expect("empty config");
    // Just under the 4 MiB cap: ~65,000 small entries, the shape that costs most per byte.
    let mut auths = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < 4 * 1024 * 1024 - 100 * 1024 {
        let entry = format!(r#""reg{i:06}.example.com":{{"auth":"dXNlcnBhc3M6cGFzc3dvcmQ="}}"#);
        size += entry.len() + 1;
        auths.push(entry);
        i += 1;
    }
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!(r#"{{"auths":{{{}}}}}"#, auths.join(","))).expect("config");
    let file_kib = std::fs::metadata(&big).expect("size").len() / 1024;

    let baseline = peak_rss_with(&empty, &resolv);
    let loaded = peak_rss_with(&big, &resolv);
    // Measured: about 4x the file's size (the text, then ~250 bytes per credential); a JSON
    // tree of the whole file, as before, took over 30x.
    let growth = loaded.saturating_sub(baseline);
    assert!(
        growth < 16 * file_kib,
        "a {file_kib} KiB docker config grew the peak RSS by {growth} KiB ({baseline} → {loaded} KiB)"
    );
}
