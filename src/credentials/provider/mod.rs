//! The kubelet's image credential provider plugins (`--image-credential-provider-config` and
//! `--image-credential-provider-bin-dir`): loaded, matched, run, cached and merged as it does.

mod cache;
mod config;
mod exec;
mod matcher;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use self::config::ProviderConfigError;
use self::config::{BIN_DIR_FLAG, ProviderSpec};
use super::{Credential, Keyring};
use crate::reference::ImageRef;

/// The configured providers, in the config's order (the order the kubelet asks them in).
pub struct Providers {
    bin_dir: PathBuf,
    providers: Vec<Provider>,
    runs: AtomicU64,
}

/// One provider and its answers kept for their cache duration.
struct Provider {
    spec: ProviderSpec,
    /// Held across the cache look-up, the run and the store, so concurrent look-ups run the
    /// plugin once and the others find its answer (the kubelet's single flight, here per provider).
    cache: tokio::sync::Mutex<cache::Cache>,
}

/// What the providers answered for one image.
#[derive(Debug, Default)]
pub struct ProviderAnswer {
    /// Every credential the kubelet would try, in its order (the merged keyring's).
    pub found: Vec<ProviderCredential>,
    /// Providers that matched the image but gave nothing usable, in config order.
    pub failures: Vec<ProviderFailure>,
}

/// A credential and the provider that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCredential {
    pub provider: String,
    pub credential: Credential,
}

/// A provider that failed for the image: why, with the plugin's stderr (never its stdout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderFailure {
    /// The provider's name; empty when the image itself could not be read.
    pub provider: String,
    pub message: String,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("bin_dir", &self.bin_dir)
            .field(
                "providers",
                &self.providers.iter().map(|p| &p.spec).collect::<Vec<_>>(),
            )
            .field("runs", &self.runs())
            .finish()
    }
}

impl Providers {
    /// Loads and validates the config; plugins are looked up in bin_dir.
    ///
    /// Like the kubelet at start-up, a missing bin dir or a provider whose plugin is missing
    /// or not executable is an error here; a plugin that goes missing later fails its look-ups.
    pub fn load(config: &Path, bin_dir: &Path) -> Result<Providers, ProviderConfigError> {
        let bin_origin = format!("{BIN_DIR_FLAG} {}", bin_dir.display());
        match std::fs::metadata(bin_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(ProviderConfigError::new(bin_origin, "not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProviderConfigError::new(bin_origin, "does not exist"));
            }
            Err(e) => {
                return Err(ProviderConfigError::new(
                    bin_origin,
                    format!("cannot read: {e}"),
                ));
            }
        }
        let specs = config::read(config)?;
        for spec in &specs {
            if let Err(problem) = exec::resolve(bin_dir, &spec.name) {
                return Err(ProviderConfigError::new(
                    bin_origin,
                    format!("{problem} (provider {:?}, {})", spec.name, spec.declared_at),
                ));
            }
            if spec.token_attributes {
                tracing::warn!(
                    provider = %spec.name,
                    "the provider wants a pod's service account token (tokenAttributes); pullwatch cannot mint one and reports it as failing"
                );
            }
        }
        Ok(Providers {
            bin_dir: bin_dir.to_path_buf(),
            providers: specs
                .into_iter()
                .map(|spec| Provider {
                    spec,
                    cache: tokio::sync::Mutex::new(cache::Cache::default()),
                })
                .collect(),
            runs: AtomicU64::new(0),
        })
    }

    /// The providers' names, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.spec.name.as_str())
    }

    /// Credentials the matching providers give for `image`, in the kubelet's order.
    ///
    /// `image` is the pod spec's string (`nginx:1.27`); it is reduced to what the kubelet gives
    /// its keyring and plugins, the normalised repository without tag or digest
    /// (`docker.io/library/nginx`). Providers are asked one after the other, all within
    /// `timeout` (each run also within the kubelet's one minute); every matching provider is
    /// asked, and their answers merged into one keyring as the kubelet does.
    pub async fn lookup(&self, image: &str, timeout: Duration) -> ProviderAnswer {
        let deadline = Instant::now() + timeout;
        let reference = match ImageRef::parse(image) {
            Ok(reference) => reference,
            Err(e) => {
                return ProviderAnswer {
                    found: Vec::new(),
                    failures: vec![ProviderFailure {
                        provider: String::new(),
                        message: e.to_string(),
                    }],
                };
            }
        };
        let (registry, repository) = (reference.registry(), reference.repository());
        let repo = format!("{registry}/{repository}");
        let mut answers: Vec<(&str, Vec<Credential>)> = Vec::new();
        let mut failures = Vec::new();
        for provider in &self.providers {
            let name = provider.spec.name.as_str();
            if !provider
                .spec
                .match_images
                .iter()
                .any(|glob| matcher::urls_match(glob, &repo))
            {
                continue;
            }
            match self.provide(provider, &repo, deadline).await {
                Ok(credentials) => answers.push((name, credentials)),
                Err(problem) => failures.push(ProviderFailure {
                    provider: name.to_string(),
                    message: format!("credential provider {name:?}: {problem}"),
                }),
            }
        }
        let merged = Keyring::from_auths(
            "credential providers",
            answers.iter().flat_map(|(_, c)| c.iter().cloned()),
        );
        let found = attribute(&answers, merged.lookup_all(registry, repository));
        ProviderAnswer { found, failures }
    }

    /// How many times plugins were executed (for tests of the cache).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// One provider's answer for the looked-up repository `image`: cached, or run now.
    async fn provide(
        &self,
        provider: &Provider,
        image: &str,
        deadline: Instant,
    ) -> Result<Vec<Credential>, String> {
        let spec = &provider.spec;
        if spec.token_attributes {
            return Err("wants a pod's service account token (tokenAttributes), which the kubelet mints per pod; pullwatch has no pod and does not run it".into());
        }
        let mut cache = tokio::time::timeout_at(deadline, provider.cache.lock())
            .await
            .map_err(|_| "timed out waiting for another run of the same plugin".to_string())?;
        if let Some(credentials) = cache.get(image, std::time::Instant::now()) {
            return Ok(credentials);
        }
        let call = exec::Invocation {
            name: &spec.name,
            bin_dir: &self.bin_dir,
            api_version: &spec.api_version,
            args: &spec.args,
            env: &spec.env,
        };
        let run_deadline = deadline.min(Instant::now() + exec::KUBELET_TIMEOUT);
        let mut response = exec::run(&call, image, run_deadline, &self.runs).await?;
        let credentials = response.credentials();
        let ttl = response
            .cache_duration
            .unwrap_or(spec.default_cache_duration);
        cache.put(
            response.cache_key_type,
            image,
            credentials.clone(),
            ttl,
            std::time::Instant::now(),
        );
        Ok(credentials)
    }
}

/// Names the provider of each credential the merged keyring returned. An `auth` key is unique
/// within one answer, and equal keys keep the providers' order in the keyring, so the n-th
/// credential under a key came from the n-th provider that answered with that key.
fn attribute(
    answers: &[(&str, Vec<Credential>)],
    matched: Vec<&Credential>,
) -> Vec<ProviderCredential> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    matched
        .into_iter()
        .filter_map(|credential| {
            let key = credential.key.as_str();
            let n = match seen.iter_mut().find(|(k, _)| *k == key) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    seen.push((key, 1));
                    0
                }
            };
            let provider = answers
                .iter()
                .filter(|(_, credentials)| credentials.iter().any(|c| c.key == key))
                .nth(n)?
                .0;
            Some(ProviderCredential {
                provider: provider.to_string(),
                credential: credential.clone(),
            })
        })
        .collect()
}

/// The config parser and the `matchImages` matcher on raw text (for the fuzz targets): each
/// parsed provider's patterns matched against `images`; the number of matches.
#[doc(hidden)]
pub(crate) fn fuzz_config(text: &str, images: &[&str]) -> Result<usize, ProviderConfigError> {
    let specs = config::parse("fuzz", text)?;
    Ok(specs
        .iter()
        .flat_map(|spec| &spec.match_images)
        .flat_map(|glob| {
            images
                .iter()
                .filter(move |image| matcher::urls_match(glob, image))
        })
        .count())
}

/// The response parser on raw bytes (for the fuzz targets), its answer cached and looked up
/// for `image` as [`Providers::lookup`] does; the credentials found.
#[doc(hidden)]
pub(crate) fn fuzz_response(out: &[u8], image: &str) -> Result<usize, String> {
    let mut response = exec::parse_response(out, "credentialprovider.kubelet.k8s.io/v1")?;
    let credentials = response.credentials();
    let now = std::time::Instant::now();
    let mut cache = cache::Cache::default();
    let ttl = response.cache_duration.unwrap_or(Duration::from_secs(60));
    cache.put(
        response.cache_key_type,
        image,
        credentials.clone(),
        ttl,
        now,
    );
    let cached = cache.get(image, now).unwrap_or_default();
    let merged = Keyring::from_auths("fuzz", cached);
    let (registry, repository) = image.split_once('/').unwrap_or((image, ""));
    Ok(merged.lookup_all(registry, repository).len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;

    fn credential(key: &str, user: &str) -> Credential {
        Credential {
            username: user.into(),
            password: Secret::new(format!("pw-{user}")),
            key: key.into(),
        }
    }

    #[test]
    fn merges_answers_like_the_kubelets_keyring() {
        struct Case {
            input: (&'static str, &'static str),
            want: &'static [(&'static str, &'static str)],
        }
        let answers = vec![
            (
                "a",
                vec![
                    credential("reg.io", "a-root"),
                    credential("reg.io/team", "a-team"),
                ],
            ),
            (
                "b",
                vec![
                    credential("reg.io", "b-root"),
                    credential("*.reg.io", "b-glob"),
                ],
            ),
            ("c", vec![credential("https://reg.io", "c-root")]),
        ];
        let cases = [
            Case {
                input: ("reg.io", "team/app"),
                want: &[
                    ("a", "a-team"),
                    ("a", "a-root"),
                    ("b", "b-root"),
                    ("c", "c-root"),
                ],
            },
            Case {
                input: ("reg.io", "other/app"),
                want: &[("a", "a-root"), ("b", "b-root"), ("c", "c-root")],
            },
            Case {
                input: ("eu.reg.io", "app"),
                want: &[("b", "b-glob")],
            },
            Case {
                input: ("ghcr.io", "app"),
                want: &[],
            },
        ];
        for case in cases {
            let ring =
                Keyring::from_auths("test", answers.iter().flat_map(|(_, c)| c.iter().cloned()));
            let (registry, repository) = case.input;
            let got: Vec<(String, String)> =
                attribute(&answers, ring.lookup_all(registry, repository))
                    .into_iter()
                    .map(|f| (f.provider, f.credential.username))
                    .collect();
            let want: Vec<(String, String)> = case
                .want
                .iter()
                .map(|(p, u)| (p.to_string(), u.to_string()))
                .collect();
            assert_eq!(got, want, "{registry}/{repository}");
        }
    }
}
