//! Series stay bounded: more registries than `--max-registries` and more failing series than
//! `--max-failing-series` are refused and counted, the series count does not grow round after
//! round, memory stays small, and `promtool check metrics` finds nothing to lint.

use std::time::Duration;

use testkit::agent::{Agent, sample, samples};
use testkit::dns::DnsServer;

const CANDIDATES: usize = 200;
const MAX_REGISTRIES: usize = 10;
const MAX_FAILING: usize = 8;

/// Sample lines (not comments) of the agent's own series, without the process metrics.
fn pullwatch_series(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|l| l.starts_with("pullwatch_"))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_string()
        })
        .collect()
}

fn dropped(exposition: &str, metric: &str) -> f64 {
    sample(
        exposition,
        "pullwatch_series_dropped_total",
        &[("metric", metric)],
    )
    .unwrap_or_else(|| panic!("no series_dropped_total for {metric}:\n{exposition}"))
}

#[test]
fn registries_and_failing_series_past_their_caps_are_refused_and_counted() {
    // Every name is unknown to this server: each registry fails its dns check (NXDOMAIN).
    let dns = DnsServer::builder().start();
    let names: Vec<String> = (0..CANDIDATES)
        .map(|i| format!("r{i}.cardinality.pullwatch.test"))
        .collect();
    let mut agent_args = vec![
        "--interval".to_string(),
        "1s".into(),
        "--max-registries".into(),
        MAX_REGISTRIES.to_string(),
        "--max-failing-series".into(),
        MAX_FAILING.to_string(),
    ];
    for name in &names {
        agent_args.extend(["--registry".to_string(), name.clone()]);
    }
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = Agent::start(
        &["--resolv-conf", dns.resolv_conf_str(), "--timeout", "1s"],
        &agent_args,
    );

    let (first, _) = agent.wait_metrics(
        "every watched registry's first round",
        Duration::from_secs(30),
        |m| samples(m, "pullwatch_registry_up", &[]).len() == MAX_REGISTRIES,
    );
    // The first ones given are watched; the rest refused, each counted once.
    for name in &names[..MAX_REGISTRIES] {
        assert_eq!(
            sample(&first, "pullwatch_registry_up", &[("registry", name)]),
            Some(0.0),
            "{name}"
        );
    }
    assert_eq!(
        dropped(&first, "pullwatch_registry_up"),
        (CANDIDATES - MAX_REGISTRIES) as f64
    );
    let status: serde_json::Value =
        serde_json::from_str(&agent.get("/api/v1/status").1).expect("status JSON");
    assert_eq!(
        status["registries"].as_array().map(Vec::len),
        Some(MAX_REGISTRIES)
    );

    // Ten failing endpoints want a reason gauge and a failure counter each; the gauges and the
    // counters have eight slots each (a long history never crowds out the present), the rest are
    // counted.
    let failing = |m: &str| {
        samples(m, "pullwatch_endpoint_failure_reason", &[]).len()
            + samples(m, "pullwatch_check_failures_total", &[]).len()
    };
    let refused = |m: &str| {
        dropped(m, "pullwatch_endpoint_failure_reason")
            + dropped(m, "pullwatch_check_failures_total")
    };
    assert_eq!(
        samples(&first, "pullwatch_endpoint_failure_reason", &[]).len(),
        MAX_FAILING,
        "{first}"
    );
    assert_eq!(failing(&first), 2 * MAX_FAILING, "{first}");
    // Each refused series is counted once.
    let refused_once = (2 * (MAX_REGISTRIES - MAX_FAILING)) as f64;
    assert_eq!(refused(&first), refused_once, "{first}");
    let rss = |m: &str| sample(m, "process_resident_memory_bytes", &[]).expect("process metrics");
    let failures_counted = |m: &str| -> f64 {
        samples(m, "pullwatch_check_failures_total", &[])
            .iter()
            .sum()
    };

    // Ten rounds later: no refusal counted twice, the series do not grow, nor does memory.
    let before = failures_counted(&first);
    let (later, _) = agent.wait_metrics("ten more rounds", Duration::from_secs(60), |m| {
        failures_counted(m) >= before + (10 * MAX_FAILING) as f64
    });
    assert_eq!(refused(&later), refused_once, "{later}");
    assert_eq!(failing(&later), 2 * MAX_FAILING);
    assert_eq!(
        pullwatch_series(&later),
        pullwatch_series(&first),
        "the set of series changed"
    );
    let grown = rss(&later) - rss(&first);
    eprintln!(
        "RSS {:.1} MiB, then {:.1} MiB ten rounds later",
        rss(&first) / 1048576.0,
        rss(&later) / 1048576.0
    );
    assert!(rss(&later) < 128.0 * 1048576.0, "RSS {}", rss(&later));
    assert!(
        grown < 16.0 * 1048576.0,
        "RSS grew by {grown} bytes in ten rounds"
    );

    // The exposition passes Prometheus's own lint.
    let lint = testkit::run_tool(
        "promtool",
        &["check", "metrics"],
        Some(later.as_bytes()),
        Duration::from_secs(20),
    );
    assert!(lint.trim().is_empty(), "promtool check metrics:\n{lint}");
}
