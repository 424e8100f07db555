//! What Prometheus and the kubelet see of an agent watching 64 TLS registries on loopback: the time
//! from start to `/readyz` 200, the series and bytes of a `/metrics` scrape (plain and gzip), and
//! its latency over a loop of scrapes on one keep-alive connection, as Prometheus scrapes. Run with
//! `cargo bench --bench scrape`; it prints numbers and asserts nothing (the README quotes them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use testkit::agent::{Agent, samples};
use testkit::certs::TestCa;
use testkit::dns::DnsServer;
use testkit::http::Client;

/// The default `--max-registries`.
const REGISTRIES: usize = 64;
/// Scrapes per encoding.
const SCRAPES: usize = 2000;
/// Every wait is bounded.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(60);
/// Largest body read.
const MAX_BODY: usize = 16 << 20;

fn main() {
    let names: Vec<String> = (0..REGISTRIES)
        .map(|i| format!("r{i}.scrape.test"))
        .collect();
    let ca = TestCa::new("pullwatch bench CA");
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaf = ca.valid_leaf(&name_refs);
    let (dns, servers) = testkit::scripted::tls_registries(&names, &leaf, DnsServer::builder());
    let mut agent_args = vec!["--kubernetes".to_string(), "off".into()];
    if std::env::var_os("PULLWATCH_BENCH_DETAIL").is_some() {
        agent_args.push("--metrics-detail".into());
    }
    for (name, server) in names.iter().zip(&servers) {
        agent_args.extend(["--registry".into(), format!("{name}:{}", server.port())]);
    }
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();

    let started = Instant::now();
    let agent = Agent::start(
        &[
            "--resolv-conf",
            dns.resolv_conf_str(),
            "--ca-file",
            ca.cert_path_str(),
            "--timeout",
            "2s",
        ],
        &agent_args,
    );
    let answered = started.elapsed();
    let ready = loop {
        if agent.get("/readyz").0 == 200 {
            break started.elapsed();
        }
        assert!(started.elapsed() < SETTLE, "/readyz not 200 in {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    agent.wait_metrics("every registry up", SETTLE, |m| {
        let up = samples(m, "pullwatch_registry_up", &[]);
        up.len() == REGISTRIES && up.iter().all(|v| *v == 1.0)
    });

    let plain = Client::http(agent.addr())
        .get("/metrics")
        .expect("GET /metrics");
    let text = plain.text();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let of_registries = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("registry=\""))
        .count();
    let gzip = Client::http(agent.addr())
        .request("GET", "/metrics", &[("Accept-Encoding", "gzip")], &[])
        .expect("GET /metrics with gzip");

    println!("scrape: {REGISTRIES} healthy TLS registries on loopback, one endpoint each");
    println!(
        "  /healthz answered        {:.0} ms after start (discovery done)",
        answered.as_secs_f64() * 1000.0
    );
    println!(
        "  /readyz 200              {:.0} ms after start",
        ready.as_secs_f64() * 1000.0
    );
    println!(
        "  series                   {series} ({of_registries} about registries: {:.1} per registry)",
        of_registries as f64 / REGISTRIES as f64
    );
    println!(
        "  /metrics bytes           {} plain, {} gzip ({})",
        plain.body.len(),
        gzip.body.len(),
        gzip.header("content-encoding").unwrap_or("not encoded")
    );
    for (label, accept) in [("plain", None), ("gzip", Some("gzip"))] {
        let took = scrape_loop(agent.addr(), accept);
        println!(
            "  scrape latency, {label:<5}    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({SCRAPES} scrapes on one connection)",
            percentile(&took, 0.50),
            percentile(&took, 0.99),
            percentile(&took, 1.0)
        );
    }
}

/// `SCRAPES` scrapes of `/metrics` back to back on one keep-alive connection; each one's time in
/// milliseconds, from the request's first byte to the body's last.
fn scrape_loop(addr: SocketAddr, accept_encoding: Option<&str>) -> Vec<f64> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the agent");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    let mut request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(value) = accept_encoding {
        request.push_str(&format!("Accept-Encoding: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut took = Vec::with_capacity(SCRAPES);
    let mut body = Vec::with_capacity(MAX_BODY);
    for _ in 0..SCRAPES {
        let start = Instant::now();
        writer.write_all(request.as_bytes()).expect("send a scrape");
        let length = read_head(&mut reader);
        assert!(length <= MAX_BODY, "body of {length} bytes");
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("read the body");
        took.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    took
}

/// Reads a response head that must be `200` and returns its `Content-Length`.
fn read_head(reader: &mut impl BufRead) -> usize {
    let mut length = None;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the response head");
        assert!(n > 0, "the agent closed the connection");
        let trimmed = line.trim_end();
        if first {
            assert!(trimmed.starts_with("HTTP/1.1 200"), "{trimmed}");
            first = false;
        } else if trimmed.is_empty() {
            return length.expect("a Content-Length");
        } else if let Some((name, value)) = trimmed.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
}

/// The `q` quantile (nearest rank) of `values`.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
