//! One failing pod's pull secrets, read as the kubelet reads them: one bounded GET per secret,
//! never a list or watch, nothing cached; each becomes a keyring or a failure naming it, never its content.

use std::collections::BTreeMap;
use std::time::Duration;

use super::api::{self, ApiClient, ApiError};
use super::object::{ByteString, Pod, Secret, ServiceAccount};
use crate::credentials::Keyring;

/// The secret type the kubelet reads `.dockerconfigjson` from.
const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// The legacy secret type the kubelet reads `.dockercfg` from.
const DOCKERCFG: &str = "kubernetes.io/dockercfg";
/// Secrets read for one pod at most (pod's and service account's together): the pod's list is
/// not capped by the API, and each GET costs a round trip to the API server.
pub const MAX_SECRETS: usize = 16;
/// The API server refuses secrets larger than this (`MaxSecretSize`); a bigger docker config
/// cannot have come from it.
const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The longest API name (a DNS subdomain); also caps what a failure quotes of a name or type.
const MAX_NAME: usize = 253;

/// What one pod's pull secrets gave: usable keyrings in the kubelet's order, and what could not
/// be used. Held only for one check; the caller drops it.
#[derive(Debug, Default)]
pub struct PodSecrets {
    pub keyrings: Vec<SecretKeyring>,
    pub failures: Vec<SecretFailure>,
}

/// A pull secret that parsed: its credentials, and which list named it.
#[derive(Debug)]
pub struct SecretKeyring {
    /// `namespace/name`.
    pub secret: String,
    pub keyring: Keyring,
    pub source: Source,
}

/// A pull secret (or the service account) that could not be used, and why; never its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFailure {
    /// `namespace/name` of the secret, or `serviceaccount namespace/name` when the service
    /// account itself could not be read.
    pub secret: String,
    /// A whole sentence for people: names the secret (or service account) and the problem.
    pub message: String,
    pub source: Source,
}

/// Which list named a secret: the kubelet uses only the pod's own (see [`read_pull_secrets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The pod's `spec.imagePullSecrets`: what the kubelet pulls with.
    Pod,
    /// Only the service account's `imagePullSecrets`: the kubelet does not use it for this pod
    /// (admission copies these only into pods created with none of their own).
    ServiceAccount { name: String },
}

/// Why one secret or the service account cannot be used. Never holds secret content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum Problem {
    #[error("not found (404)")]
    NotFound,
    #[error(
        "forbidden (403): pullwatch may not get it (apply the deploy/components/pull-secrets component)"
    )]
    Forbidden,
    #[error("the API server answered {code} {reason}")]
    Api { code: u16, reason: String },
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    #[error("the API server's answer could not be decoded as a {0}")]
    Decode(&'static str),
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    #[error("\"{0}\" is not a valid object name")]
    BadName(String),
    #[error(
        "type {found:?} is neither {DOCKER_CONFIG_JSON} nor {DOCKERCFG}; the kubelet ignores it"
    )]
    WrongType { found: String },
    #[error("type {kind} but no {key} key, or it is empty; the kubelet ignores it")]
    MissingKey {
        kind: &'static str,
        key: &'static str,
    },
    #[error("{key} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { key: &'static str },
    #[error("{key} is not UTF-8 text")]
    NotUtf8 { key: &'static str },
    /// The keyring's own words (they name keys and fields, never values).
    #[error("{key}: {problem}")]
    Malformed { key: &'static str, problem: String },
}

/// Reads `pod`'s pull secrets, each GET bounded by `timeout`: first the pod's
/// `spec.imagePullSecrets` in order, then its service account's `imagePullSecrets` not read
/// already (marked [`Source::ServiceAccount`]). At most [`MAX_SECRETS`] secrets plus the service
/// account are read, so the whole call takes at most `(MAX_SECRETS + 1) × timeout`.
///
/// What the kubelet does (pkg/kubelet/kubelet_pods.go `getPullSecretsForPod`): it GETs each name
/// in the pod's `spec.imagePullSecrets`, skipping empty names and going on past a secret it
/// cannot get; it never reads the service account. The service account's `imagePullSecrets`
/// reach a pod only through the ServiceAccount admission plugin
/// (plugin/pkg/admission/serviceaccount/admission.go), which copies them into the pod at
/// creation, and only when the pod names none of its own. So a secret found only through the
/// service account is one the kubelet does not have for this pod (the pod names its own, or the
/// service account got it after the pod was created): it is read to say so, and marked.
/// Which secrets count (pkg/credentialprovider/secrets/secrets.go `MakeDockerKeyring`): type
/// `kubernetes.io/dockerconfigjson` with a non-empty `.dockerconfigjson`, or
/// `kubernetes.io/dockercfg` with a non-empty `.dockercfg`; others it skips without a word, and one
/// that does not parse fails the pull (pkg/kubelet/kuberuntime/kuberuntime_image.go `PullImage`).
pub async fn read_pull_secrets(client: &ApiClient, pod: &Pod, timeout: Duration) -> PodSecrets {
    let mut out = PodSecrets::default();
    let Some(namespace) = pod.metadata.namespace.as_deref().filter(|n| !n.is_empty()) else {
        out.failures.push(SecretFailure {
            secret: String::new(),
            message: "the pod has no namespace: its pull secrets cannot be read".into(),
            source: Source::Pod,
        });
        return out;
    };
    let spec = pod.spec.as_ref();
    let own: Vec<String> = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .map(|refs| refs.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default();
    let secrets = Namespace { client, namespace };
    let mut read = Vec::new();
    for name in own {
        read_one(
            &secrets,
            namespace,
            &name,
            Source::Pod,
            timeout,
            &mut read,
            &mut out,
        )
        .await;
    }

    let account = service_account_name(pod);
    let fetched = match checked_name(account) {
        Ok(()) => secrets.get::<ServiceAccount>(account, timeout).await,
        Err(problem) => Err(problem),
    };
    match fetched {
        Ok(found) => {
            let names = found
                .image_pull_secrets
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name);
            for name in names {
                let source = Source::ServiceAccount {
                    name: account.to_string(),
                };
                read_one(
                    &secrets, namespace, &name, source, timeout, &mut read, &mut out,
                )
                .await;
            }
        }
        Err(problem) => out.failures.push(SecretFailure {
            secret: format!("serviceaccount {namespace}/{account}"),
            message: format!("service account {namespace}/{account}: {problem}"),
            source: Source::ServiceAccount {
                name: account.to_string(),
            },
        }),
    }
    out
}

/// GETs one secret named by `source` unless it is empty or read already, and files the outcome.
async fn read_one(
    secrets: &Namespace<'_>,
    namespace: &str,
    name: &str,
    source: Source,
    timeout: Duration,
    read: &mut Vec<String>,
    out: &mut PodSecrets,
) {
    // Empty names pass API validation (kubernetes#99454); the kubelet skips them too.
    if name.is_empty() || read.iter().any(|r| r == name) {
        return;
    }
    let secret = format!("{namespace}/{}", clip(name));
    if read.len() == MAX_SECRETS {
        out.failures.push(SecretFailure {
            message: format!(
                "pull secret {secret}: not read (pullwatch reads at most {MAX_SECRETS} pull secrets per pod)"
            ),
            secret,
            source,
        });
        return;
    }
    read.push(name.to_string());
    let origin = format!("pull secret {secret}");
    let parsed = match checked_name(name) {
        Ok(()) => secrets.get::<Secret>(name, timeout).await,
        Err(problem) => Err(problem),
    }
    .and_then(|found| keyring(&origin, found.type_.as_deref(), found.data.as_ref()));
    match parsed {
        Ok(keyring) => out.keyrings.push(SecretKeyring {
            secret,
            keyring,
            source,
        }),
        Err(problem) => out.failures.push(SecretFailure {
            message: format!("{origin}: {problem}"),
            secret,
            source,
        }),
    }
}

/// The pod's service account: `spec.serviceAccountName`, else the deprecated
/// `spec.serviceAccount`, else `default` (what admission would have set).
fn service_account_name(pod: &Pod) -> &str {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.as_deref())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            spec.and_then(|s| s.service_account.as_deref())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or("default")
}

/// A name the API could hold (a DNS subdomain): anything else would not address one object.
fn checked_name(name: &str) -> Result<(), Problem> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(Problem::BadName(clip(name)))
    }
}

/// One namespace's objects, read by name.
struct Namespace<'a> {
    client: &'a ApiClient,
    namespace: &'a str,
}

/// The most of a Secret or ServiceAccount read (the API server refuses a secret over 1 MiB of
/// data; base64 and metadata make it at most about 1.4 MiB).
const MAX_OBJECT: usize = 2 * 1024 * 1024;

/// An object read by name: its resource in the API's path and its kind in errors.
trait ByName: serde::de::DeserializeOwned {
    const RESOURCE: &'static str;
    const KIND: &'static str;
}

impl ByName for Secret {
    const RESOURCE: &'static str = "secrets";
    const KIND: &'static str = "Secret";
}

impl ByName for ServiceAccount {
    const RESOURCE: &'static str = "serviceaccounts";
    const KIND: &'static str = "ServiceAccount";
}

impl Namespace<'_> {
    /// One GET of the object `name`, at most `timeout`; errors keep status codes and reasons,
    /// never a body.
    async fn get<T: ByName>(&self, name: &str, timeout: Duration) -> Result<T, Problem> {
        let path = format!(
            "/api/v1/namespaces/{}/{}/{}",
            api::escape(self.namespace),
            T::RESOURCE,
            api::escape(name)
        );
        self.client
            .get(&path, MAX_OBJECT, timeout)
            .await
            .map_err(|error| api_problem(error, T::KIND))
    }
}

/// A client error in words that cannot carry content: a decoding error could quote bytes of the
/// answer (a secret's data), an API error's message could be a proxy's echo.
fn api_problem(error: ApiError, kind: &'static str) -> Problem {
    match error {
        ApiError::Status { code: 404, .. } => Problem::NotFound,
        ApiError::Status { code: 403, .. } => Problem::Forbidden,
        ApiError::Status { code, reason } => Problem::Api { code, reason },
        ApiError::Timeout(timeout) => Problem::Timeout(timeout),
        ApiError::Decode(_) => Problem::Decode(kind),
        other @ (ApiError::Transport(_) | ApiError::TooLarge(_) | ApiError::Credentials(_)) => {
            Problem::Transport(other.to_string())
        }
    }
}

/// The keyring of one secret as the kubelet would build it, named `origin`.
fn keyring(
    origin: &str,
    kind: Option<&str>,
    data: Option<&BTreeMap<String, ByteString>>,
) -> Result<Keyring, Problem> {
    let (key, text) = docker_config(kind, data)?;
    Keyring::parse(origin, text).map_err(|e| Problem::Malformed {
        key,
        problem: e.problem,
    })
}

/// The docker config text of a secret: which key the kubelet reads for its type, present,
/// non-empty, within size, and UTF-8.
fn docker_config<'a>(
    kind: Option<&str>,
    data: Option<&'a BTreeMap<String, ByteString>>,
) -> Result<(&'static str, &'a str), Problem> {
    let (kind, key) = match kind {
        Some(DOCKER_CONFIG_JSON) => (DOCKER_CONFIG_JSON, ".dockerconfigjson"),
        Some(DOCKERCFG) => (DOCKERCFG, ".dockercfg"),
        // The API server defaults an empty type to Opaque.
        other => {
            return Err(Problem::WrongType {
                found: clip(other.filter(|t| !t.is_empty()).unwrap_or("Opaque")),
            });
        }
    };
    let bytes = data
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .filter(|b| !b.is_empty())
        .ok_or(Problem::MissingKey { kind, key })?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(Problem::TooLarge { key });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Problem::NotUtf8 { key })?;
    Ok((key, text))
}

/// At most [`MAX_NAME`] bytes of a name or type from the API, on a character boundary.
fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_NAME);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const CANARY: &str = "canary-pw-7f3a";

    fn data(key: &str, value: &[u8]) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(key.to_string(), ByteString(value.to_vec()))])
    }

    fn config_json() -> String {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{CANARY}"));
        format!(r#"{{"auths":{{"reg.test:5000":{{"auth":"{auth}"}}}}}}"#)
    }

    #[test]
    fn reads_the_key_the_kubelet_reads_for_the_type() {
        let json = config_json();
        let legacy = format!(
            r#"{{"reg.test:5000":{{"auth":"{}"}}}}"#,
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{CANARY}"))
        );
        struct Case {
            name: &'static str,
            kind: Option<&'static str>,
            data: Option<BTreeMap<String, ByteString>>,
            want: Result<&'static str, Problem>,
        }
        let cases = [
            Case {
                name: "dockerconfigjson",
                kind: Some(DOCKER_CONFIG_JSON),
                data: Some(data(".dockerconfigjson", json.as_bytes())),
                want: Ok(".dockerconfigjson"),
            },
            Case {
                name: "dockercfg",
                kind: Some(DOCKERCFG),
                data: Some(data(".dockercfg", legacy.as_bytes())),
                want: Ok(".dockercfg"),
            },
            Case {
                name: "opaque with the right key",
                kind: Some("Opaque"),
                data: Some(data(".dockerconfigjson", json.as_bytes())),
                want: Err(Problem::WrongType {
                    found: "Opaque".into(),
                }),
            },
            Case {
                name: "no type",
                kind: None,
                data: Some(data(".dockerconfigjson", json.as_bytes())),
                want: Err(Problem::WrongType {
                    found: "Opaque".into(),
                }),
            },
            Case {
                name: "dockerconfigjson type, dockercfg key",
                kind: Some(DOCKER_CONFIG_JSON),
                data: Some(data(".dockercfg", legacy.as_bytes())),
                want: Err(Problem::MissingKey {
                    kind: DOCKER_CONFIG_JSON,
                    key: ".dockerconfigjson",
                }),
            },
            Case {
                name: "empty value",
                kind: Some(DOCKERCFG),
                data: Some(data(".dockercfg", b"")),
                want: Err(Problem::MissingKey {
                    kind: DOCKERCFG,
                    key: ".dockercfg",
                }),
            },
            Case {
                name: "no data",
                kind: Some(DOCKER_CONFIG_JSON),
                data: None,
                want: Err(Problem::MissingKey {
                    kind: DOCKER_CONFIG_JSON,
                    key: ".dockerconfigjson",
                }),
            },
            Case {
                name: "not UTF-8",
                kind: Some(DOCKER_CONFIG_JSON),
                data: Some(data(".dockerconfigjson", &[0x7b, 0xff, 0xfe, 0x7d])),
                want: Err(Problem::NotUtf8 {
                    key: ".dockerconfigjson",
                }),
            },
            Case {
                name: "too large",
                kind: Some(DOCKER_CONFIG_JSON),
                data: Some(data(".dockerconfigjson", &vec![b' '; MAX_CONFIG_BYTES + 1])),
                want: Err(Problem::TooLarge {
                    key: ".dockerconfigjson",
                }),
            },
        ];
        for case in cases {
            let got = docker_config(case.kind, case.data.as_ref()).map(|(key, _)| key);
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn usable_secrets_give_the_credential_and_bad_ones_no_content() {
        let ring = keyring(
            "pull secret shop/regcred",
            Some(DOCKER_CONFIG_JSON),
            Some(&data(".dockerconfigjson", config_json().as_bytes())),
        )
        .expect("a usable secret");
        assert_eq!(ring.origin(), "pull secret shop/regcred");
        let credential = ring.lookup("reg.test:5000", "team/app").expect("a match");
        assert_eq!(
            (credential.username.as_str(), credential.password.expose()),
            ("alice", CANARY)
        );
        assert!(!format!("{ring:?}").contains(CANARY));

        let b64 = base64::engine::general_purpose::STANDARD.encode(CANARY);
        for bad in [
            format!(r#"{{"auths":{{"reg.test":{{"auth":"{CANARY}!"}}}}}}"#),
            format!(r#"{{"auths":{{"reg.test":{{"auth":"{b64}"}}}}}}"#),
            format!(r#"{{"auths":{{"reg.test":"{CANARY}"}}}}"#),
            format!(r#"{{"auths":{{"reg.test":{{"password":"{CANARY}""#),
        ] {
            let problem = keyring(
                "pull secret shop/regcred",
                Some(DOCKER_CONFIG_JSON),
                Some(&data(".dockerconfigjson", bad.as_bytes())),
            )
            .expect_err(&bad);
            let text = format!("{problem} {problem:?}");
            assert!(text.starts_with(".dockerconfigjson: "), "{text}");
            assert!(!text.contains(CANARY) && !text.contains(&b64), "{text}");
        }
    }

    #[test]
    fn names_are_checked_before_a_request() {
        for (name, ok) in [
            ("regcred", true),
            ("reg.cred-1", true),
            ("", false),
            ("../pods", false),
            ("a/b", false),
            ("Regcred", false),
            ("-x", false),
            ("x?watch=true", false),
        ] {
            assert_eq!(checked_name(name).is_ok(), ok, "{name:?}");
        }
        assert!(checked_name(&"a".repeat(MAX_NAME + 1)).is_err());
        assert_eq!(clip(&"é".repeat(200)).len(), 252);
    }

    #[test]
    fn the_service_account_defaults_like_admission() {
        let pod = |name: Option<&str>, deprecated: Option<&str>| Pod {
            spec: Some(crate::agent::pods::object::PodSpec {
                service_account_name: name.map(String::from),
                service_account: deprecated.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(service_account_name(&pod(Some("builder"), None)), "builder");
        assert_eq!(service_account_name(&pod(None, Some("old"))), "old");
        assert_eq!(service_account_name(&pod(Some(""), None)), "default");
        assert_eq!(service_account_name(&Pod::default()), "default");
    }
}
