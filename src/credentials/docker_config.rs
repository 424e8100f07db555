//! Docker config credentials (`.dockerconfigjson` / `config.json`, or the legacy `.dockercfg`
//! map), matched to an image the way the kubelet's keyring matches keys. Error messages name keys
//! and fields, never a value.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Credential, Secret};
use crate::bounded_file;
use crate::route::DOCKER_HUB;

/// Why a docker config cannot be used: names where it came from (`--docker-config FILE`, a pull
/// secret) and the problem, never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {problem}")]
pub struct CredentialsError {
    pub origin: String,
    pub problem: String,
}

/// Where an `auths` key applies: host globs (`*.example.com`), port and a path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    /// The kubelet's normalised key: host[:port][/path], without scheme or `/v1/`, `/v2/`.
    key: String,
    host_labels: Vec<String>,
    port: String,
    path: String,
}

/// The credentials of one docker config (a file, a pull secret, a provider's answer), in the
/// kubelet's lookup order.
#[derive(Clone, Debug)]
pub struct Keyring {
    /// Where it came from, for errors and evidence: `--docker-config FILE`, `secret ns/name`.
    origin: String,
    /// Reverse-sorted by key, so more specific paths come first (as the kubelet's index).
    entries: Vec<(Pattern, Credential)>,
}

/// The key the kubelet uses for Docker Hub (`https://index.docker.io/v1/` normalises to it).
const DEFAULT_REGISTRY_KEY: &str = "index.docker.io";

impl Keyring {
    /// Reads (size-capped, regular files only) and parses the file at `path`, named `origin` in
    /// errors (`--docker-config FILE`).
    pub fn load(origin: &str, path: &Path) -> Result<Self, CredentialsError> {
        let text =
            bounded_file::read_to_string(path, bounded_file::DOCKER_CONFIG).map_err(|e| {
                CredentialsError {
                    origin: origin.to_string(),
                    problem: e.problem.to_string(),
                }
            })?;
        Self::parse(origin, &text)
    }

    /// Parses the text of a docker config (`config.json` / `.dockerconfigjson`, or the legacy
    /// `.dockercfg` map); `origin` names it in errors and warnings.
    pub fn parse(origin: &str, text: &str) -> Result<Self, CredentialsError> {
        let fail = |problem: String| CredentialsError {
            origin: origin.to_string(),
            problem,
        };
        // The syntax of the whole first: serde_json's syntax errors name a position, never
        // content, while typed errors could quote a value (a password). Then only the top level
        // and `auths` are split, each entry kept as its raw text (borrowed from `text`) and
        // decoded alone: memory stays in proportion to the file, with no tree of it all.
        let whole: &RawValue =
            serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
        let top = raw_object(whole)
            .ok_or_else(|| fail("expected a JSON object with \"auths\"".into()))?;
        if top.contains_key("credsStore") || top.contains_key("credHelpers") {
            tracing::warn!(
                origin,
                "credential helpers (credsStore/credHelpers) are not used by the kubelet nor by pullwatch; only \"auths\" counts"
            );
        }
        let (auths, section) = match top.get("auths") {
            Some(auths) => (
                raw_object(auths).ok_or_else(|| fail("\"auths\" is not an object".into()))?,
                "auths",
            ),
            // The legacy .dockercfg form: the map of registries is the whole file.
            None => (legacy_entries(&top), ""),
        };
        let mut entries = Vec::with_capacity(auths.len());
        for (key, raw) in &auths {
            let field = if section.is_empty() {
                format!("{key:?}")
            } else {
                format!("{section}[{key:?}]")
            };
            let pattern = Pattern::parse(key).ok_or_else(|| fail(format!("{field}: empty key")))?;
            let entry: Value = serde_json::from_str(raw.get())
                .map_err(|e| fail(format!("{field}: not valid JSON: {e}")))?;
            match entry_credential(&entry).map_err(|problem| fail(format!("{field}: {problem}")))? {
                Some((username, password)) => entries.push((
                    pattern,
                    Credential {
                        username,
                        password,
                        key: key.clone(),
                    },
                )),
                None => {
                    tracing::warn!(origin, key = %key, "entry has no auth nor username/password; ignored")
                }
            }
        }
        entries.sort_by(|a, b| b.0.key.cmp(&a.0.key));
        Ok(Keyring {
            origin: origin.to_string(),
            entries,
        })
    }

    /// A keyring from credentials already split into username and password (a credential
    /// provider's `auth` map, each `key` the map's key), in the given order: for equal keys that
    /// order stays, as in the kubelet's merged keyring. Keys that cannot be indexed are skipped.
    pub fn from_auths(origin: &str, credentials: impl IntoIterator<Item = Credential>) -> Self {
        let mut entries: Vec<(Pattern, Credential)> = credentials
            .into_iter()
            .filter_map(|credential| Some((Pattern::parse(&credential.key)?, credential)))
            .collect();
        entries.sort_by(|a, b| b.0.key.cmp(&a.0.key));
        Keyring {
            origin: origin.to_string(),
            entries,
        }
    }

    /// Every credential the kubelet would try, in turn, for `registry/repository`: all matching
    /// keys in [`Keyring::lookup`]'s order, else every Docker Hub default key for docker.io images.
    pub fn lookup_all(&self, registry: &str, repository: &str) -> Vec<&Credential> {
        let Some(target) = Pattern::parse(&format!("{registry}/{repository}")) else {
            return Vec::new();
        };
        let matched: Vec<&Credential> = self
            .entries
            .iter()
            .filter(|(pattern, _)| pattern.matches(&target))
            .map(|(_, credential)| credential)
            .collect();
        if !matched.is_empty() || (registry != DOCKER_HUB && registry != DEFAULT_REGISTRY_KEY) {
            return matched;
        }
        self.entries
            .iter()
            .filter(|(pattern, _)| pattern.key == DEFAULT_REGISTRY_KEY)
            .map(|(_, credential)| credential)
            .collect()
    }

    /// Where the credentials came from (`--docker-config FILE`, `secret ns/name`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The credential the kubelet would send first for `registry/repository` (a normalised
    /// reference without tag), if any: keys matched in reverse-sorted order, then Docker Hub's
    /// default key for docker.io images.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credential> {
        self.lookup_all(registry, repository).into_iter().next()
    }
}

/// A JSON object's members, each value still raw text; `None` when it is not an object. A later
/// duplicate key wins, as in Go's `encoding/json` (and serde_json's `Value`).
fn raw_object(raw: &RawValue) -> Option<BTreeMap<String, &RawValue>> {
    if !raw.get().starts_with('{') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// In a legacy `.dockercfg`, every top-level object that looks like a credential entry.
fn legacy_entries<'a>(top: &BTreeMap<String, &'a RawValue>) -> BTreeMap<String, &'a RawValue> {
    let looks_like_an_entry = |raw: &RawValue| {
        raw_object(raw).is_some_and(|o| {
            o.contains_key("auth") || o.contains_key("username") || o.contains_key("password")
        })
    };
    top.iter()
        .filter(|(_, raw)| looks_like_an_entry(raw))
        .map(|(key, raw)| (key.clone(), *raw))
        .collect()
}

/// The username and password of one entry (`auth` wins over `username`/`password`, as in the
/// kubelet); `None` when it holds neither. Problems never quote the value.
fn entry_credential(entry: &Value) -> Result<Option<(String, Secret)>, String> {
    let Value::Object(entry) = entry else {
        return Err("not an object".into());
    };
    let text = |name: &str| match entry.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    };
    let (auth, username, password) = (text("auth")?, text("username")?, text("password")?);
    if let Some(auth) = auth.filter(|a| !a.is_empty()) {
        let engine = &base64::engine::general_purpose::STANDARD;
        let lenient = &base64::engine::general_purpose::STANDARD_NO_PAD;
        let decoded = engine
            .decode(auth.trim())
            .or_else(|_| lenient.decode(auth.trim().trim_end_matches('=')))
            .map_err(|_| "\"auth\" is not valid base64".to_string())?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| "\"auth\" does not decode to UTF-8 text".to_string())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "\"auth\" does not decode to username:password".to_string())?;
        return Ok(Some((username.to_string(), Secret::new(password))));
    }
    match (username, password) {
        (None, None) => Ok(None),
        (username, password) => Ok(Some((
            username.unwrap_or_default(),
            Secret::new(password.unwrap_or_default()),
        ))),
    }
}

impl Pattern {
    /// The kubelet's `Add`: scheme dropped, `/v1/` or `/v2/` dropped, host[:port] and path split.
    fn parse(key: &str) -> Option<Self> {
        let rest = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        let (host, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if host.is_empty() {
            return None;
        }
        let path = ["/v1/", "/v2/"]
            .iter()
            .find_map(|prefix| {
                path.strip_prefix(&prefix[..3])
                    .filter(|_| path.starts_with(prefix))
            })
            .unwrap_or(path);
        let path = if path == "/" { "" } else { path };
        let (name, port) = split_port(host);
        Some(Pattern {
            key: format!("{host}{path}"),
            host_labels: name.split('.').map(str::to_string).collect(),
            port: port.to_string(),
            path: path.to_string(),
        })
    }

    /// The kubelet's `URLsMatch`: same port, same number of host labels each matching its glob,
    /// and the key's path a (string) prefix of the image's.
    fn matches(&self, target: &Pattern) -> bool {
        self.port == target.port
            && self.host_labels.len() == target.host_labels.len()
            && target.path.starts_with(&self.path)
            && self
                .host_labels
                .iter()
                .zip(&target.host_labels)
                .all(|(glob, label)| glob_match(glob.as_bytes(), label.as_bytes()))
    }
}

/// `host:port` → (`host`, `port`); IPv6 in brackets keeps its brackets.
fn split_port(host: &str) -> (&str, &str) {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.contains(']') && (!name.contains(':') || name.ends_with(']')) =>
        {
            (name, port)
        }
        _ => (host, ""),
    }
}

/// Go's `filepath.Match` for one host label: `*` any run of characters, `?` one character.
/// Only the last `*` is ever backtracked to (as Go does), so a key with many stars costs at most
/// glob × label steps: both come from outside (a pull secret, a pod's image).
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    // The glob index after the last `*` seen, and the text index that star's run ends at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g + 1, t));
                g += 1;
            }
            Some(c) if *c == b'?' || *c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((after, end)) => {
                    star = Some((after, end + 1));
                    g = after;
                    t = end + 1;
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn keyring(json: &str) -> Keyring {
        Keyring::parse("--docker-config /etc/config.json", json).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A key of many stars (a pull secret) against a long host label (a pod's image) is decided
    /// in glob × label steps: tried star by star, it never finished.
    #[test]
    fn many_stars_are_matched_without_backtracking_each() {
        let glob = "*a".repeat(30) + "*b";
        let label = "a".repeat(62);
        assert!(!glob_match(glob.as_bytes(), label.as_bytes()));
        assert!(glob_match(
            glob.as_bytes(),
            (label.clone() + "b").as_bytes()
        ));
        assert!(glob_match(b"a*?c*", b"abxcyy"));
        assert!(!glob_match(b"a*?c", b"ac"));
        let keys = format!(r#"{{"auths":{{"{glob}.example.com":{{"auth":"YTpi"}}}}}}"#);
        assert!(
            keyring(&keys)
                .lookup(&format!("{label}.example.com"), "app")
                .is_none()
        );
    }

    #[test]
    fn matches_keys_like_the_kubelet() {
        struct Case {
            keys: &'static [&'static str],
            registry: &'static str,
            repository: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                keys: &["registry.test:5000"],
                registry: "registry.test:5000",
                repository: "team/app",
                want: Some("registry.test:5000"),
            },
            Case {
                keys: &["https://registry.test:5000"],
                registry: "registry.test:5000",
                repository: "app",
                want: Some("https://registry.test:5000"),
            },
            Case {
                keys: &["registry.test:5000/v2/"],
                registry: "registry.test:5000",
                repository: "app",
                want: Some("registry.test:5000/v2/"),
            },
            Case {
                keys: &["registry.test"],
                registry: "registry.test:5000",
                repository: "app",
                want: None,
            },
            Case {
                keys: &["registry.test:5000"],
                registry: "registry.test",
                repository: "app",
                want: None,
            },
            Case {
                keys: &["https://index.docker.io/v1/"],
                registry: "docker.io",
                repository: "library/nginx",
                want: Some("https://index.docker.io/v1/"),
            },
            Case {
                keys: &["docker.io"],
                registry: "docker.io",
                repository: "library/nginx",
                want: Some("docker.io"),
            },
            Case {
                keys: &["https://index.docker.io/v1/"],
                registry: "ghcr.io",
                repository: "org/app",
                want: None,
            },
            Case {
                keys: &["reg.io", "reg.io/team"],
                registry: "reg.io",
                repository: "team/app",
                want: Some("reg.io/team"),
            },
            Case {
                keys: &["reg.io", "reg.io/team"],
                registry: "reg.io",
                repository: "other/app",
                want: Some("reg.io"),
            },
            Case {
                keys: &["reg.io/team"],
                registry: "reg.io",
                repository: "other/app",
                want: None,
            },
            // A string prefix, as in the kubelet: `team` covers `team2/…` too.
            Case {
                keys: &["reg.io/team"],
                registry: "reg.io",
                repository: "team2/app",
                want: Some("reg.io/team"),
            },
            Case {
                keys: &["*.example.com"],
                registry: "eu.example.com",
                repository: "app",
                want: Some("*.example.com"),
            },
            Case {
                keys: &["*.example.com"],
                registry: "example.com",
                repository: "app",
                want: None,
            },
            Case {
                keys: &["*.example.com"],
                registry: "a.b.example.com",
                repository: "app",
                want: None,
            },
            Case {
                keys: &["*.example.com:5000"],
                registry: "eu.example.com:5000",
                repository: "app",
                want: Some("*.example.com:5000"),
            },
            Case {
                keys: &["reg?.example.com"],
                registry: "reg1.example.com",
                repository: "app",
                want: Some("reg?.example.com"),
            },
            Case {
                keys: &["10.0.0.5:5000"],
                registry: "10.0.0.5:5000",
                repository: "app",
                want: Some("10.0.0.5:5000"),
            },
        ];
        for case in cases {
            let auths: serde_json::Map<String, Value> = case
                .keys
                .iter()
                .map(|k| {
                    (
                        k.to_string(),
                        serde_json::json!({ "auth": b64(&format!("user-{}:pw", k.replace(':', "_"))) }),
                    )
                })
                .collect();
            let ring = keyring(&serde_json::json!({ "auths": auths }).to_string());
            let got = ring
                .lookup(case.registry, case.repository)
                .map(|c| c.key.as_str());
            assert_eq!(
                got, case.want,
                "keys {:?}, image {}/{}",
                case.keys, case.registry, case.repository
            );
            if let Some(credential) = ring.lookup(case.registry, case.repository) {
                assert_eq!(
                    credential.username,
                    format!("user-{}", credential.key.replace(':', "_"))
                );
            }
        }
    }

    #[test]
    fn reads_auth_username_password_and_legacy_files() {
        let ring = keyring(&format!(
            r#"{{"auths":{{"a.test":{{"auth":"{}"}},"b.test":{{"username":"bob","password":"p:w"}},
               "c.test":{{"auth":"{}","username":"ignored","password":"ignored"}},"d.test":{{"email":"x@y"}}}},
               "credsStore":"desktop"}}"#,
            b64("alice:s3cret:with:colons"),
            b64("carol:pw")
        ));
        let a = ring.lookup("a.test", "x").unwrap();
        assert_eq!(
            (a.username.as_str(), a.password.expose()),
            ("alice", "s3cret:with:colons")
        );
        let b = ring.lookup("b.test", "x").unwrap();
        assert_eq!((b.username.as_str(), b.password.expose()), ("bob", "p:w"));
        assert_eq!(ring.lookup("c.test", "x").unwrap().username, "carol");
        assert!(
            ring.lookup("d.test", "x").is_none(),
            "an entry without credentials is skipped"
        );

        let legacy = keyring(&format!(
            r#"{{"legacy.test":{{"auth":"{}","email":"e"}}}}"#,
            b64("old:pw")
        ));
        assert_eq!(legacy.lookup("legacy.test", "x").unwrap().username, "old");
        let unpadded = keyring(&format!(
            r#"{{"auths":{{"p.test":{{"auth":"{}"}}}}}}"#,
            b64("ab:c").trim_end_matches('=')
        ));
        assert_eq!(
            unpadded.lookup("p.test", "x").unwrap().password.expose(),
            "c"
        );
    }

    #[test]
    fn malformed_files_name_the_file_and_the_problem_but_no_secret() {
        struct Case {
            input: String,
            want: &'static str,
        }
        let cases = [
            Case {
                input: "{\"auths\": {".into(),
                want: "not valid JSON",
            },
            Case {
                input: "[]".into(),
                want: "expected a JSON object",
            },
            Case {
                input: r#"{"auths": "hunter2"}"#.into(),
                want: "\"auths\" is not an object",
            },
            Case {
                input: r#"{"auths": {"r.test": "hunter2"}}"#.into(),
                want: "auths[\"r.test\"]: not an object",
            },
            Case {
                input: r#"{"auths": {"r.test": {"auth": "hunter2!!"}}}"#.into(),
                want: "auths[\"r.test\"]: \"auth\" is not valid base64",
            },
            Case {
                input: format!(
                    r#"{{"auths": {{"r.test": {{"auth": "{}"}}}}}}"#,
                    b64("hunter2")
                ),
                want: "does not decode to username:password",
            },
            Case {
                input: r#"{"auths": {"r.test": {"password": 5}}}"#.into(),
                want: "\"password\" is not a string",
            },
            Case {
                input: r#"{"auths": {"": {"auth": "aDpw"}}}"#.into(),
                want: "empty key",
            },
        ];
        for case in cases {
            let error = Keyring::parse("--docker-config /etc/config.json", &case.input)
                .expect_err(&case.input)
                .to_string();
            assert!(
                error.starts_with("--docker-config /etc/config.json: "),
                "{error}"
            );
            assert!(error.contains(case.want), "{}: {error}", case.input);
            assert!(
                !error.contains("hunter2") && !error.contains(&b64("hunter2")),
                "{error}"
            );
        }
        let missing = Keyring::load(
            "--docker-config /nonexistent/config.json",
            Path::new("/nonexistent/config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("/nonexistent/config.json: cannot read"),
            "{missing}"
        );
        let device = Keyring::load("--docker-config /dev/zero", Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            device,
            "--docker-config /dev/zero: is a character device, not a regular file"
        );
    }

    #[test]
    fn duplicate_keys_and_whitespace_read_as_go_reads_them() {
        // encoding/json: a later duplicate key wins, at the top level and in `auths`.
        let ring = keyring(&format!(
            " \n {{\"auths\": {{\"r.test\": {{\"auth\": \"{}\"}}, \"r.test\": {{\"auth\": \"{}\"}}}}}} \n",
            b64("first:pw"),
            b64("second:pw")
        ));
        assert_eq!(ring.lookup("r.test", "app").unwrap().username, "second");
        let ring = keyring(&format!(
            r#"{{"auths": 1, "auths": {{"r.test": {{"auth": "{}"}}}}}}"#,
            b64("last:pw")
        ));
        assert_eq!(ring.lookup("r.test", "app").unwrap().username, "last");
        for not_an_object in ["[]", "\"auths\"", "null", " 5 "] {
            let error = Keyring::parse("x", not_an_object).unwrap_err().to_string();
            assert!(error.contains("expected a JSON object"), "{error}");
        }
    }

    #[test]
    fn from_auths_keeps_every_match_in_the_kubelets_order() {
        let credential = |key: &str, user: &str| Credential {
            username: user.into(),
            password: Secret::new("pw"),
            key: key.into(),
        };
        let ring = Keyring::from_auths(
            "credential providers",
            [
                credential("reg.io", "first"),
                credential("reg.io/team", "specific"),
                credential("https://reg.io", "second"),
                credential("other.io", "other"),
                credential("index.docker.io", "hub"),
            ],
        );
        let users = |registry, repository| -> Vec<String> {
            ring.lookup_all(registry, repository)
                .into_iter()
                .map(|c| c.username.clone())
                .collect()
        };
        assert_eq!(users("reg.io", "team/app"), ["specific", "first", "second"]);
        assert_eq!(users("reg.io", "else/app"), ["first", "second"]);
        assert_eq!(users("docker.io", "library/nginx"), ["hub"]);
        assert!(users("ghcr.io", "x/y").is_empty());
        assert_eq!(
            ring.lookup("reg.io", "team/app")
                .map(|c| c.username.as_str()),
            Some("specific")
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        let credential = Credential {
            username: "alice".into(),
            password: secret.clone(),
            key: "r.test".into(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
