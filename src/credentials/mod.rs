//! Registry credentials as the kubelet has them, and where each came from. Secrets stay in
//! [`Secret`]: no `Display`, a redacting `Debug`; nothing here ever prints a value.

mod docker_config;
pub mod provider;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::reference::ImageRef;

pub use self::docker_config::{CredentialsError, Keyring};
use self::provider::Providers;

/// A password, `auth` value or token: readable only through [`Secret::expose`], never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for putting on the wire (an `Authorization` header) and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One username/password pair and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: Secret,
    /// The key of `auths` it came from, as written in the file (evidence for people).
    pub key: String,
}

/// Where a credential came from, in the kubelet's order: the `source` label of
/// `pullwatch_registry_credentials` and what every report names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A pod's `imagePullSecrets` (or its service account's): `namespace/name`.
    PullSecret(String),
    /// A kubelet credential provider plugin, by its name in the provider config.
    CredentialProvider(String),
    /// A docker config file: `--docker-config`, or the kubelet's own under its root dir.
    DockerConfig(PathBuf),
    /// No credentials: an anonymous pull.
    #[default]
    None,
}

impl Source {
    /// The label value: `pull_secret`, `credential_provider`, `docker_config`, `none`.
    pub fn label(&self) -> &'static str {
        match self {
            Source::PullSecret(_) => "pull_secret",
            Source::CredentialProvider(_) => "credential_provider",
            Source::DockerConfig(_) => "docker_config",
            Source::None => "none",
        }
    }
}

impl std::fmt::Display for Source {
    /// As reports say it: `pull secret shop/regcred`, `credential provider ecr-credential-provider`,
    /// `docker config /var/lib/kubelet/config.json`, `anonymous`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::PullSecret(name) => write!(f, "pull secret {name}"),
            Source::CredentialProvider(name) => write!(f, "credential provider {name}"),
            Source::DockerConfig(path) => write!(f, "docker config {}", path.display()),
            Source::None => f.write_str("anonymous"),
        }
    }
}

/// One credential offered for an image, and its source.
#[derive(Clone, Debug)]
pub struct Offered {
    pub credential: Credential,
    pub source: Source,
}

/// A source that should have given credentials and failed (a plugin that exited non-zero, a pull
/// secret that is missing): evidence for `credentials_unavailable`. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFailure {
    pub source: Source,
    pub message: String,
}

/// What the kubelet's sources hold for one image: the credentials in the order the kubelet tries
/// them, the sources that failed, and every place looked in (for "unverified: no credentials").
#[derive(Clone, Debug, Default)]
pub struct ImageCredentials {
    pub offered: Vec<Offered>,
    pub failures: Vec<SourceFailure>,
    pub looked_in: Vec<String>,
}

impl ImageCredentials {
    /// Puts `earlier` (a failing pod's pull secrets) before what is here, as the kubelet tries a
    /// pod's own secrets before the node's credentials.
    pub fn after(mut self, earlier: ImageCredentials) -> Self {
        let mut offered = earlier.offered;
        offered.append(&mut self.offered);
        let mut failures = earlier.failures;
        failures.append(&mut self.failures);
        let mut looked_in = earlier.looked_in;
        looked_in.append(&mut self.looked_in);
        ImageCredentials {
            offered,
            failures,
            looked_in,
        }
    }

    /// The first credential the kubelet would send, if any.
    pub fn first(&self) -> Option<&Offered> {
        self.offered.first()
    }
}

/// The node's own credential sources, read once at start-up, in the kubelet's order: its image
/// credential provider plugins, then docker config files (`--docker-config`, else the kubelet's
/// `config.json` / `.dockercfg` under its root dir).
#[derive(Clone, Debug, Default)]
pub struct NodeCredentials {
    providers: Option<Arc<Providers>>,
    /// How long all the providers' plugins may take for one image.
    provider_timeout: Duration,
    docker_configs: Vec<(PathBuf, Keyring)>,
    /// The files looked for, present or not (an absent kubelet config is normal, not a warning).
    looked_in: Vec<String>,
}

/// The kubelet's own docker config files under its root dir, in its order: `config.json` before
/// the legacy `.dockercfg` (pkg/credentialprovider/config.go reads the JSON form first).
const KUBELET_DOCKER_CONFIGS: [&str; 2] = ["config.json", ".dockercfg"];

impl NodeCredentials {
    /// `--docker-config` files when given (each must load: a bad one is an error), else the first
    /// of the kubelet's own files under `kubelet_root_dir` that exists (a bad one is an error too:
    /// the kubelet would fail to use it just the same).
    pub fn load(
        docker_configs: &[PathBuf],
        kubelet_root_dir: &Path,
    ) -> Result<Self, CredentialsError> {
        let mut loaded = Vec::new();
        let mut looked_in = Vec::new();
        if docker_configs.is_empty() {
            for name in KUBELET_DOCKER_CONFIGS {
                let path = kubelet_root_dir.join(name);
                looked_in.push(path.display().to_string());
                if path.is_file() {
                    let origin = format!("kubelet docker config {}", path.display());
                    loaded.push((path.clone(), Keyring::load(&origin, &path)?));
                    break;
                }
            }
        } else {
            for path in docker_configs {
                looked_in.push(path.display().to_string());
                let origin = format!("--docker-config {}", path.display());
                loaded.push((path.clone(), Keyring::load(&origin, path)?));
            }
        }
        Ok(NodeCredentials {
            docker_configs: loaded,
            looked_in,
            ..NodeCredentials::default()
        })
    }

    /// Adds the kubelet's credential provider plugins, asked before the docker configs; their
    /// plugins may take `timeout` in all for one image.
    pub fn with_providers(
        mut self,
        providers: Providers,
        config: &Path,
        timeout: Duration,
    ) -> Self {
        self.looked_in.insert(
            0,
            format!("credential provider config {}", config.display()),
        );
        self.providers = Some(Arc::new(providers));
        self.provider_timeout = timeout;
        self
    }

    /// What the node's sources hold for `image`, in the kubelet's order: every credential each
    /// source has for it (the kubelet tries them all in turn), providers first.
    pub async fn lookup(&self, image: &ImageRef) -> ImageCredentials {
        let mut offered = Vec::new();
        let mut failures = Vec::new();
        if let Some(providers) = &self.providers {
            let answer = providers
                .lookup(&image.to_string(), self.provider_timeout)
                .await;
            offered.extend(answer.found.into_iter().map(|found| Offered {
                credential: found.credential,
                source: Source::CredentialProvider(found.provider),
            }));
            failures.extend(answer.failures.into_iter().map(|failed| SourceFailure {
                source: Source::CredentialProvider(failed.provider),
                message: failed.message,
            }));
        }
        for (path, keyring) in &self.docker_configs {
            let found = keyring.lookup_all(image.registry(), image.repository());
            offered.extend(found.into_iter().map(|credential| Offered {
                credential: credential.clone(),
                source: Source::DockerConfig(path.clone()),
            }));
        }
        ImageCredentials {
            offered,
            failures,
            looked_in: self.looked_in.clone(),
        }
    }
}
