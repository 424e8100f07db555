//! The `agent` flags (`docs/flags.md`) and their validation: flags and `PULLWATCH_*` variables become an
//! [`AgentConfig`] once at start-up; a bad value is an error naming the flag (exit 64).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::agent::pods::Mode as KubernetesMode;
use crate::route::check_registry_flag;

/// The agent's own flags (the shared ones are [`crate::config::CommonFlags`]).
#[derive(Args, Debug, Clone)]
pub struct AgentFlags {
    /// Address serving /metrics, /healthz, /readyz and /api/v1/status.
    #[arg(long, env = "PULLWATCH_LISTEN", default_value = "0.0.0.0:9746")]
    pub listen: SocketAddr,

    /// This node's name, on every series as the `node` label [default: $NODE_NAME, then the hostname].
    #[arg(long, env = "PULLWATCH_NODE_NAME")]
    pub node_name: Option<String>,

    /// How often each registry's endpoints get the connectivity checks (dns, tcp, tls, http), ±10% jitter.
    #[arg(long, env = "PULLWATCH_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub interval: Duration,

    /// How often each registry's auth and manifest checks run (a HEAD of a digest the node holds,
    /// never a GET), ±10% jitter.
    #[arg(long, env = "PULLWATCH_MANIFEST_INTERVAL", default_value = "5m", value_parser = parse_long_interval)]
    pub manifest_interval: Duration,

    /// How often the runtime pulls each registry's canary by digest (it downloads nothing); 0 disables.
    #[arg(long, env = "PULLWATCH_RUNTIME_CHECK_INTERVAL", default_value = "5m", value_parser = parse_optional_interval)]
    pub runtime_check_interval: Duration,

    /// A registry (host or host:port) to probe always; repeatable.
    #[arg(
        long = "registry",
        env = "PULLWATCH_REGISTRY",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub registries: Vec<String>,

    /// At most this many registries are watched; the rest are refused and counted in
    /// pullwatch_series_dropped_total.
    #[arg(long, env = "PULLWATCH_MAX_REGISTRIES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_registries: u32,

    /// At most this many series labelled with a failure `reason` exist at once; the rest are
    /// refused and counted in pullwatch_series_dropped_total.
    #[arg(long, env = "PULLWATCH_MAX_FAILING_SERIES", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_failing_series: u32,

    /// Watch this node's pods (spec.nodeName only) for image pull failures; auto: when running in
    /// a cluster (KUBERNETES_SERVICE_HOST set). Credentials: KUBECONFIG, else in-cluster.
    #[arg(long, env = "PULLWATCH_KUBERNETES", value_enum, default_value_t = KubernetesMode::Auto)]
    pub kubernetes: KubernetesMode,

    /// Post each pull failure's diagnosis as an Event on its pod; --post-events=false keeps it to
    /// metrics and /api/v1/status.
    #[arg(long, env = "PULLWATCH_POST_EVENTS", default_value_t = true,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub post_events: bool,

    /// Read a failing pod's pull secrets (its imagePullSecrets, then its service account's) for
    /// its diagnosis, as the kubelet uses them; needs `get` on secrets and serviceaccounts
    /// (deploy/components/pull-secrets). Only GETs, only for a failing pod, never cached.
    #[arg(long, env = "PULLWATCH_PULL_SECRETS", default_value_t = false,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub pull_secrets: bool,

    /// Export the per-check series (check_success, check_duration_seconds, dns_addresses,
    /// tcp_addresses_reachable, http_status_code) of healthy endpoints too; without it they exist
    /// only while an endpoint fails.
    #[arg(long, env = "PULLWATCH_METRICS_DETAIL", default_value_t = false,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub metrics_detail: bool,

    /// Unix socket of the agent's own gRPC API (Status, Diagnose); `diagnose --agent` connects to it.
    #[arg(
        long,
        env = "PULLWATCH_API_SOCKET",
        default_value = "/run/pullwatch/pullwatch.sock"
    )]
    pub api_socket: PathBuf,
}

/// Validated agent settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub node_name: String,
    pub interval: Duration,
    pub manifest_interval: Duration,
    /// `None`: the runtime check is off.
    pub runtime_check_interval: Option<Duration>,
    /// `--registry`, deduplicated, in the order given.
    pub registries: Vec<String>,
    pub max_registries: usize,
    pub max_failing_series: usize,
    pub api_socket: PathBuf,
    /// `--kubernetes`, with `auto` already decided: `Off` outside a cluster, `Auto` inside one.
    pub kubernetes: KubernetesMode,
    pub post_events: bool,
    pub pull_secrets: bool,
    /// `--metrics-detail`: per-check series of healthy endpoints too.
    pub metrics_detail: bool,
}

/// A flag value that parsed but cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag} {value:?}: {problem}")]
pub struct AgentConfigError {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

/// Kubernetes node names are DNS subdomains: at most 253 characters.
const MAX_NODE_NAME: usize = 253;

/// 1s to 24h.
fn parse_long_interval(value: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(value).map_err(|e| format!("{e} (expected e.g. 5m, 1h)"))?;
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(24 * 3600) {
        return Err("must be between 1s and 24h".into());
    }
    Ok(duration)
}

/// 0 (off), or 1s to 24h.
fn parse_optional_interval(value: &str) -> Result<Duration, String> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    match humantime::parse_duration(value) {
        Ok(duration) if duration.is_zero() => Ok(duration),
        _ => parse_long_interval(value).map_err(|e| format!("{e}, or 0 to disable")),
    }
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(value).map_err(|e| format!("{e} (expected e.g. 30s, 1m)"))?;
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(duration)
}

impl AgentFlags {
    /// Validates the flags. `env` reads the environment (`NODE_NAME`), `hostname` is the fallback
    /// node name; both are parameters so the rules are testable without touching the process.
    pub fn validate(
        &self,
        env: impl Fn(&str) -> Option<String>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<AgentConfig, AgentConfigError> {
        let node_name = match &self.node_name {
            Some(name) => name.clone(),
            None => env("NODE_NAME")
                .filter(|n| !n.trim().is_empty())
                .or_else(hostname)
                .unwrap_or_default(),
        };
        let node_name = node_name.trim().to_string();
        if node_name.is_empty() || node_name.len() > MAX_NODE_NAME {
            return Err(AgentConfigError {
                flag: "--node-name",
                value: node_name,
                problem: format!(
                    "must be 1-{MAX_NODE_NAME} characters (set --node-name or NODE_NAME)"
                ),
            });
        }
        if let Some(bad) = node_name.chars().find(|c| c.is_control()) {
            return Err(AgentConfigError {
                flag: "--node-name",
                value: node_name.clone(),
                problem: format!("contains the control character {bad:?}"),
            });
        }
        let mut registries: Vec<String> = Vec::with_capacity(self.registries.len());
        for registry in &self.registries {
            let registry = registry.trim();
            check_registry_flag(registry).map_err(|problem| AgentConfigError {
                flag: "--registry",
                value: registry.to_string(),
                problem,
            })?;
            if !registries.iter().any(|r| r == registry) {
                registries.push(registry.to_string());
            }
        }
        Ok(AgentConfig {
            listen: self.listen,
            node_name,
            interval: self.interval,
            manifest_interval: self.manifest_interval,
            runtime_check_interval: (!self.runtime_check_interval.is_zero())
                .then_some(self.runtime_check_interval),
            registries,
            max_registries: self.max_registries as usize,
            max_failing_series: self.max_failing_series as usize,
            api_socket: self.api_socket.clone(),
            kubernetes: match self.kubernetes {
                KubernetesMode::Auto if !self.kubernetes.enabled(&env) => KubernetesMode::Off,
                mode => mode,
            },
            post_events: self.post_events,
            pull_secrets: self.pull_secrets,
            metrics_detail: self.metrics_detail,
        })
    }
}

/// The kernel's host name, the last fallback for the node name.
pub fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentFlags,
    }

    fn flags(args: &[&str]) -> Result<AgentFlags, clap::Error> {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied())).map(|c| c.agent)
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = flags(&[])
            .unwrap()
            .validate(|_| None, || Some("node-a".into()))
            .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9746".parse().unwrap());
        assert_eq!(config.interval, Duration::from_secs(30));
        assert_eq!(config.manifest_interval, Duration::from_secs(300));
        assert_eq!(
            config.runtime_check_interval,
            Some(Duration::from_secs(300))
        );
        assert_eq!(config.max_registries, 64);
        assert_eq!(config.max_failing_series, 500);
        assert_eq!(
            config.api_socket,
            PathBuf::from("/run/pullwatch/pullwatch.sock")
        );
        assert_eq!(config.node_name, "node-a");
        assert!(!config.metrics_detail);
        assert!(flags(&["--metrics-detail"]).unwrap().metrics_detail);
    }

    #[test]
    fn node_name_comes_from_the_flag_then_node_name_then_hostname() {
        struct Case {
            flag: Option<&'static str>,
            env: Option<&'static str>,
            hostname: Option<&'static str>,
            want: Result<&'static str, &'static str>,
        }
        let cases = [
            Case {
                flag: Some("flag"),
                env: Some("env"),
                hostname: Some("host"),
                want: Ok("flag"),
            },
            Case {
                flag: None,
                env: Some("env"),
                hostname: Some("host"),
                want: Ok("env"),
            },
            Case {
                flag: None,
                env: Some(" "),
                hostname: Some("host"),
                want: Ok("host"),
            },
            Case {
                flag: None,
                env: None,
                hostname: None,
                want: Err("--node-name"),
            },
            Case {
                flag: Some(""),
                env: Some("env"),
                hostname: None,
                want: Err("--node-name"),
            },
        ];
        for case in cases {
            let mut args = vec![];
            if let Some(flag) = case.flag {
                args.extend(["--node-name", flag]);
            }
            let got = flags(&args).unwrap().validate(
                |name| {
                    (name == "NODE_NAME")
                        .then(|| case.env.map(String::from))
                        .flatten()
                },
                || case.hostname.map(String::from),
            );
            match (got, case.want) {
                (Ok(config), Ok(want)) => assert_eq!(config.node_name, want),
                (Err(error), Err(flag)) => assert_eq!(error.flag, flag),
                (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--interval", "0s"][..], "--interval"),
            (&["--interval", "500ms"][..], "--interval"),
            (&["--interval", "soon"][..], "--interval"),
            (&["--manifest-interval", "0s"][..], "--manifest-interval"),
            (&["--manifest-interval", "2d"][..], "--manifest-interval"),
            (
                &["--runtime-check-interval", "forever"][..],
                "--runtime-check-interval",
            ),
            (&["--listen", "9746"][..], "--listen"),
            (&["--max-registries", "0"][..], "--max-registries"),
            (&["--max-failing-series=-1"][..], "--max-failing-series"),
        ] {
            let error = flags(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert!(error.to_string().contains(flag), "{args:?}: {error}");
        }
        for bad in ["https://reg.example", "reg.example/path", "reg:0", "[::1"] {
            let error = flags(&["--registry", bad])
                .unwrap()
                .validate(|_| None, || Some("n".into()))
                .unwrap_err();
            assert_eq!(error.flag, "--registry", "{bad}");
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn kubernetes_auto_follows_the_cluster_and_events_can_be_turned_off() {
        let in_cluster =
            |name: &str| (name == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_string());
        let host = || Some("n".to_string());
        let config = flags(&[]).unwrap().validate(in_cluster, host).unwrap();
        assert_eq!(config.kubernetes, KubernetesMode::Auto);
        assert!(config.post_events);
        let config = flags(&[]).unwrap().validate(|_| None, host).unwrap();
        assert_eq!(config.kubernetes, KubernetesMode::Off);
        let config = flags(&["--kubernetes", "on", "--post-events=false"])
            .unwrap()
            .validate(|_| None, host)
            .unwrap();
        assert_eq!(config.kubernetes, KubernetesMode::On);
        assert!(!config.post_events);
        assert!(flags(&["--post-events"]).unwrap().post_events);
        assert!(flags(&["--kubernetes", "maybe"]).is_err());
    }

    #[test]
    fn the_runtime_check_can_be_turned_off() {
        for off in ["0", "0s"] {
            let config = flags(&["--runtime-check-interval", off])
                .unwrap()
                .validate(|_| None, || Some("n".into()))
                .unwrap();
            assert_eq!(config.runtime_check_interval, None, "{off}");
        }
    }

    #[test]
    fn registries_are_deduplicated_in_order() {
        let config = flags(&[
            "--registry",
            "b.example,a.example",
            "--registry",
            "b.example",
            "--registry",
            "10.0.0.5:5000",
        ])
        .unwrap()
        .validate(|_| None, || Some("n".into()))
        .unwrap();
        assert_eq!(
            config.registries,
            ["b.example", "a.example", "10.0.0.5:5000"]
        );
    }
}
