//! Flags and `PULLWATCH_*` environment variables → typed, validated settings, once at start-up.
//! A bad value is an error naming the flag and the value; nothing is checked again later.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::check::auth::TokenCache;
use crate::check::dns::DnsResolver;
use crate::credentials::NodeCredentials;
use crate::credentials::provider::Providers;
use crate::diagnose::{Diagnoser, PullSettings};
use crate::platform::Platform;
use crate::proxy::ProxySettings;
use crate::route::RuntimeKind;
use crate::route::{RouteConfig, check_registry_flag};
use crate::trust::Trust;

/// A credential provider's plugins may take this many check timeouts for one image (they call
/// a cloud API; the kubelet allows a minute).
const PROVIDER_TIMEOUTS: u32 = 4;

/// `--runtime-version NAME/VERSION`: a runtime pullwatch has routing rules for, and a version
/// that starts with a number (`containerd/1.7.13`, `containerd/v2.0.1`, `cri-o/1.30.2`).
fn parse_runtime_version(value: &str) -> Result<(RuntimeKind, String), String> {
    let (name, version) = value
        .split_once('/')
        .ok_or_else(|| format!("{value:?}: expected NAME/VERSION, e.g. containerd/1.7.13"))?;
    let kind = RuntimeKind::from_name(name);
    if !matches!(kind, RuntimeKind::Containerd | RuntimeKind::CriO) {
        return Err(format!(
            "{name:?}: the runtimes with routing rules are containerd and cri-o"
        ));
    }
    let digits = version.trim_start_matches('v');
    if !digits.starts_with(|c: char| c.is_ascii_digit()) || version.len() > 64 {
        return Err(format!("{version:?}: a version such as 1.7.13"));
    }
    Ok((kind, version.to_string()))
}

/// Flags shared by `agent` and `diagnose` (`docs/flags.md`, "Global flags"); crictl's names where it has one.
#[derive(Args, Debug, Clone)]
pub struct CommonFlags {
    /// Resolver configuration the dns check uses (the node's, as the runtime sees it).
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    pub resolv_conf: PathBuf,

    /// Extra trusted CA certificates (PEM) for every registry; repeatable.
    #[arg(
        long = "ca-file",
        global = true,
        env = "PULLWATCH_CA_FILE",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,

    /// A registry (host or host:port) reached over plain HTTP, as the runtime's insecure setting; repeatable.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "PULLWATCH_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,

    /// Registry credentials in .dockerconfigjson / config.json form; repeatable. Default: the
    /// kubelet's own config.json (or .dockercfg) under --kubelet-root-dir, when present.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_DOCKER_CONFIG",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub docker_config: Vec<PathBuf>,

    /// The kubelet's image credential provider config (`CredentialProviderConfig`, YAML or JSON,
    /// a file or a directory of them): its plugins are run for credentials as the kubelet runs them.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_IMAGE_CREDENTIAL_PROVIDER_CONFIG",
        value_name = "FILE",
        requires = "image_credential_provider_bin_dir"
    )]
    pub image_credential_provider_config: Option<PathBuf>,

    /// Where the credential provider plugins are (only executables named in the config run).
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR",
        value_name = "DIR",
        requires = "image_credential_provider_config"
    )]
    pub image_credential_provider_bin_dir: Option<PathBuf>,

    /// The runtime whose routing rules apply, as NAME/VERSION (`containerd/1.7.13`,
    /// `cri-o/1.30.2`): for `diagnose` or `targets` without a CRI socket, or to override what
    /// the socket's `Version` says.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_RUNTIME_VERSION",
        value_name = "NAME/VERSION",
        value_parser = parse_runtime_version
    )]
    pub runtime_version: Option<(RuntimeKind, String)>,

    /// The kubelet's root directory (its --root-dir), where it keeps its own docker config.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_KUBELET_ROOT_DIR",
        default_value = "/var/lib/kubelet",
        value_name = "DIR"
    )]
    pub kubelet_root_dir: PathBuf,

    /// The node's platform (os/arch[/variant]), looked for in multi-platform images; default: this machine's.
    #[arg(long, global = true, env = "PULLWATCH_PLATFORM", default_value_t = Platform::host())]
    pub platform: Platform,

    /// The container runtime's CRI socket in crictl's form (unix:///run/containerd/containerd.sock);
    /// default: the first well-known socket present. No runtime is a warning, not an error.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_RUNTIME_ENDPOINT",
        value_name = "unix:///PATH"
    )]
    pub runtime_endpoint: Option<String>,

    /// containerd's registry host directory (its `config_path`): `<registry>/hosts.toml`, `_default/`.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_CONTAINERD_CERTS_DIR",
        default_value = "/etc/containerd/certs.d",
        value_name = "DIR"
    )]
    pub containerd_certs_dir: PathBuf,

    /// CRI-O's registries.conf; its `<FILE>.d/*.conf` drop-ins are read too.
    #[arg(
        long,
        global = true,
        env = "PULLWATCH_REGISTRIES_CONF",
        default_value = "/etc/containers/registries.conf",
        value_name = "FILE"
    )]
    pub registries_conf: PathBuf,

    /// Timeout of each check, e.g. 5s, 500ms.
    #[arg(long, global = true, env = "PULLWATCH_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Log line format on stderr.
    #[arg(long, global = true, env = "PULLWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where runtimes put their CRI socket, in the order they are looked for (`docs/flags.md`).
pub const RUNTIME_SOCKETS: [&str; 4] = [
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/var/run/cri-dockerd.sock",
];

/// A flag value that parsed but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The shortest `--timeout`: below it even a healthy registry on the next rack fails some check
/// (a TLS handshake alone takes milliseconds), so every verdict would be a timeout.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(value).map_err(|e| format!("{e} (expected e.g. 5s, 500ms)"))?;
    if duration < MIN_TIMEOUT || duration > Duration::from_secs(300) {
        return Err("must be between 100ms and 5m".into());
    }
    Ok(duration)
}

impl CommonFlags {
    /// The runtime's socket: `--runtime-endpoint`, else the first of [`RUNTIME_SOCKETS`] present.
    pub fn runtime_socket(&self) -> Result<Option<crate::runtime::Located>, ConfigError> {
        crate::runtime::locate(self.runtime_endpoint.as_deref(), &RUNTIME_SOCKETS)
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// Where the runtime's registry config is; which runtime's applies is learnt from the runtime.
    pub fn route_config(&self) -> RouteConfig {
        let routes = RouteConfig::new(
            self.containerd_certs_dir.clone(),
            self.registries_conf.clone(),
            self.insecure_registries.clone(),
        );
        match &self.runtime_version {
            Some((kind, version)) => routes.pinned_to(*kind, version),
            None => routes,
        }
    }

    /// Each `--insecure-registry` is a registry name a flag may give (`targets` and the engine).
    pub fn check_insecure_registries(&self) -> Result<(), ConfigError> {
        for registry in &self.insecure_registries {
            check_registry_flag(registry).map_err(|problem| {
                ConfigError(format!("--insecure-registry {registry:?}: {problem}"))
            })?;
        }
        Ok(())
    }

    /// Validates everything the checks need and builds the engine.
    pub fn diagnoser(&self) -> Result<Diagnoser, ConfigError> {
        let resolver = DnsResolver::from_resolv_conf(&self.resolv_conf)
            .map_err(|e| ConfigError(e.to_string()))?;
        let trust =
            Trust::load(&self.ca_files).map_err(|e| ConfigError(format!("--ca-file: {e}")))?;
        self.check_insecure_registries()?;
        let proxies = ProxySettings::from_env(|name| std::env::var(name).ok())
            .map_err(|e| ConfigError(e.to_string()))?;
        let mut credentials = NodeCredentials::load(&self.docker_config, &self.kubelet_root_dir)
            .map_err(|e| ConfigError(e.to_string()))?;
        if let (Some(config), Some(bin_dir)) = (
            &self.image_credential_provider_config,
            &self.image_credential_provider_bin_dir,
        ) {
            let providers =
                Providers::load(config, bin_dir).map_err(|e| ConfigError(e.to_string()))?;
            credentials =
                credentials.with_providers(providers, config, self.timeout * PROVIDER_TIMEOUTS);
        }
        Ok(Diagnoser {
            resolver,
            trust,
            proxies,
            timeout: self.timeout,
            routes: self.route_config(),
            pull: PullSettings {
                credentials,
                platform: self.platform.clone(),
                tokens: TokenCache::default(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("100ms"), Ok(Duration::from_millis(100)));
        for bad in ["0s", "1ns", "99ms", "fast", "10m", "-1s", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
