//! The kubelet's `CredentialProviderConfig` (YAML or JSON, a file or a directory of them), read
//! strictly and validated by the kubelet's rules; every error is one line naming file and field.

use std::path::Path;
use std::time::Duration;

use crate::bounded_file;
use crate::go_duration::{GoDuration, parse_go_duration};

use serde_json::{Map, Value};

use super::matcher::SchemelessUrl;

/// The kubelet flag that names the config; errors start with it so a person knows where to look.
pub(super) const CONFIG_FLAG: &str = "--image-credential-provider-config";
/// The kubelet flag that names the plugins' directory.
pub(super) const BIN_DIR_FLAG: &str = "--image-credential-provider-bin-dir";
/// A config directory with more matching files than this is refused.
const MAX_CONFIG_FILES: usize = 100;
/// The config's API group: the kubelet decodes v1, v1beta1 and v1alpha1 of it.
const CONFIG_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
/// The exec protocol versions a provider may name; the kubelet still speaks all three.
pub(super) const PLUGIN_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// Why the providers cannot be used: `<flag> <path>: <field path>: <problem>`, one line, never
/// an `env` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {problem}")]
pub struct ProviderConfigError {
    /// `--image-credential-provider-config /etc/kubernetes/credential-provider.yaml`.
    pub origin: String,
    /// `providers[1].matchImages[0]: "…" is not a valid pattern: …`.
    pub problem: String,
}

impl ProviderConfigError {
    pub(super) fn new(origin: impl Into<String>, problem: impl Into<String>) -> Self {
        ProviderConfigError {
            origin: origin.into(),
            problem: problem.into(),
        }
    }
}

/// One validated `providers[]` entry.
#[derive(Clone)]
pub(super) struct ProviderSpec {
    pub name: String,
    pub match_images: Vec<String>,
    pub default_cache_duration: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    /// Added to the plugin's environment; values may be secrets, so `Debug` shows names only.
    pub env: Vec<(String, String)>,
    /// Set when the provider wants a pod's service account token (`tokenAttributes`).
    pub token_attributes: bool,
    /// Where it was declared, for errors about it later: `<flag> <file>: providers[i]`.
    pub declared_at: String,
}

impl std::fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("match_images", &self.match_images)
            .field("default_cache_duration", &self.default_cache_duration)
            .field("api_version", &self.api_version)
            .field("args", &self.args.len())
            .field(
                "env",
                &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("token_attributes", &self.token_attributes)
            .finish()
    }
}

/// Reads the config at `path` like the kubelet: one file, or every `*.json`/`*.yaml`/`*.yml` of
/// a directory in lexical order merged (a name may appear once across them all).
pub(super) fn read(path: &Path) -> Result<Vec<ProviderSpec>, ProviderConfigError> {
    let origin = format!("{CONFIG_FLAG} {}", path.display());
    let meta = std::fs::metadata(path)
        .map_err(|e| ProviderConfigError::new(&origin, format!("cannot read: {e}")))?;
    let files = if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| ProviderConfigError::new(&origin, format!("cannot list: {e}")))?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_config = [".json", ".yaml", ".yml"]
                .iter()
                .any(|ext| name.to_string_lossy().ends_with(ext));
            if is_config && entry.file_type().is_ok_and(|t| !t.is_dir()) {
                files.push(entry.path());
            }
            if files.len() > MAX_CONFIG_FILES {
                return Err(ProviderConfigError::new(
                    &origin,
                    format!("more than {MAX_CONFIG_FILES} config files"),
                ));
            }
        }
        if files.is_empty() {
            return Err(ProviderConfigError::new(
                &origin,
                "no *.json, *.yaml or *.yml file in the directory",
            ));
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut providers: Vec<ProviderSpec> = Vec::new();
    for file in files {
        let origin = format!("{CONFIG_FLAG} {}", file.display());
        let text = bounded_file::read_to_string(&file, bounded_file::PROVIDER_CONFIG)
            .map_err(|e| ProviderConfigError::new(&origin, e.problem.to_string()))?;
        for provider in parse(&origin, &text)? {
            if let Some(first) = providers.iter().find(|p| p.name == provider.name) {
                return Err(ProviderConfigError::new(
                    &origin,
                    format!(
                        "{}.name: duplicate {:?} (first in {})",
                        provider.declared_at.rsplit(": ").next().unwrap_or_default(),
                        provider.name,
                        first.declared_at
                    ),
                ));
            }
            providers.push(provider);
        }
    }
    Ok(providers)
}

/// Parses and validates one config file's text, named `origin` in errors.
pub(super) fn parse(origin: &str, text: &str) -> Result<Vec<ProviderSpec>, ProviderConfigError> {
    let fail = |problem: String| ProviderConfigError::new(origin, problem);
    // Into a generic value first: typed decoding errors could quote a value (an env value).
    let value: Value = serde_norway::from_str(text).map_err(|e| {
        fail(format!(
            "not valid YAML or JSON: {}",
            one_line(&e.to_string())
        ))
    })?;
    let Value::Object(top) = value else {
        return Err(fail(
            "expected an object with apiVersion, kind and providers".into(),
        ));
    };
    only_fields(&top, "", &["apiVersion", "kind", "providers"]).map_err(fail)?;
    let api_version = string(&top, "", "apiVersion").map_err(fail)?;
    match api_version.as_deref() {
        Some(v) if CONFIG_VERSIONS.contains(&v) => {}
        Some(v) => {
            return Err(fail(format!(
                "apiVersion: {v:?} is not one of {}",
                CONFIG_VERSIONS.join(", ")
            )));
        }
        None => return Err(fail("apiVersion: required".into())),
    }
    match string(&top, "", "kind").map_err(fail)?.as_deref() {
        Some("CredentialProviderConfig") => {}
        Some(kind) => {
            return Err(fail(format!(
                "kind: {kind:?} is not \"CredentialProviderConfig\""
            )));
        }
        None => return Err(fail("kind: required".into())),
    }
    let providers = match top.get("providers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(fail("providers: expected a list".into())),
    };
    if providers.is_empty() {
        return Err(fail("providers: at least 1 item is required".into()));
    }
    let mut specs: Vec<ProviderSpec> = Vec::with_capacity(providers.len());
    for (i, item) in providers.iter().enumerate() {
        let at = format!("providers[{i}]");
        let spec = provider(origin, &at, item).map_err(fail)?;
        if let Some(j) = specs.iter().position(|s| s.name == spec.name) {
            return Err(fail(format!(
                "{at}.name: duplicate {:?} (also providers[{j}])",
                spec.name
            )));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// One provider entry at `at` (`providers[1]`); the problem names the field path.
fn provider(origin: &str, at: &str, item: &Value) -> Result<ProviderSpec, String> {
    let Value::Object(entry) = item else {
        return Err(format!("{at}: expected an object"));
    };
    only_fields(
        entry,
        at,
        &[
            "name",
            "matchImages",
            "defaultCacheDuration",
            "apiVersion",
            "args",
            "env",
            "tokenAttributes",
        ],
    )?;
    let name = string(entry, at, "name")?.unwrap_or_default();
    if let Some(problem) = name_problem(&name) {
        return Err(format!("{at}.name: {problem}"));
    }
    let api_version = match string(entry, at, "apiVersion")? {
        None => return Err(format!("{at}.apiVersion: required")),
        Some(v) if PLUGIN_VERSIONS.contains(&v.as_str()) => v,
        Some(v) => {
            return Err(format!(
                "{at}.apiVersion: {v:?} is not supported: one of {}",
                PLUGIN_VERSIONS.join(", ")
            ));
        }
    };
    let match_images = strings(entry, at, "matchImages")?;
    if match_images.is_empty() {
        return Err(format!("{at}.matchImages: at least 1 item is required"));
    }
    for (j, pattern) in match_images.iter().enumerate() {
        if let Err(problem) = SchemelessUrl::parse(pattern) {
            return Err(format!(
                "{at}.matchImages[{j}]: {pattern:?} is not a valid pattern: {problem}"
            ));
        }
    }
    let default_cache_duration = match string(entry, at, "defaultCacheDuration")? {
        None => return Err(format!("{at}.defaultCacheDuration: required")),
        Some(text) => match parse_go_duration(&text) {
            Ok(GoDuration::Negative) => {
                return Err(format!(
                    "{at}.defaultCacheDuration: {text:?} must be greater than or equal to 0"
                ));
            }
            Ok(GoDuration::Positive(d)) => d,
            Err(problem) => {
                return Err(format!("{at}.defaultCacheDuration: {problem}"));
            }
        },
    };
    let args = strings(entry, at, "args")?;
    let env = env(entry, at)?;
    let token_attributes = match entry.get("tokenAttributes") {
        None | Some(Value::Null) => false,
        Some(Value::Object(_)) => true,
        Some(_) => return Err(format!("{at}.tokenAttributes: expected an object")),
    };
    Ok(ProviderSpec {
        name,
        match_images,
        default_cache_duration,
        api_version,
        args,
        env,
        token_attributes,
        declared_at: format!("{origin}: {at}"),
    })
}

/// Why `name` cannot name a plugin file in the bin dir (the kubelet's rules, plus empty and
/// control characters, which it rejects later when it cannot find or run the file).
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("required")
    } else if name.contains('/') {
        Some("cannot contain '/'")
    } else if name.contains(' ') {
        Some("cannot contain spaces")
    } else if name == "." || name == ".." {
        Some("cannot be '.' or '..'")
    } else if name.chars().any(char::is_control) {
        Some("cannot contain control characters")
    } else {
        None
    }
}

/// `env: [{name, value}]` → pairs; errors name the item, never a value.
fn env(entry: &Map<String, Value>, at: &str) -> Result<Vec<(String, String)>, String> {
    let items = match entry.get("env") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("{at}.env: expected a list")),
    };
    let mut pairs = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let here = format!("{at}.env[{k}]");
        let Value::Object(var) = item else {
            return Err(format!("{here}: expected an object with name and value"));
        };
        only_fields(var, &here, &["name", "value"])?;
        let name = string(var, &here, "name")?.unwrap_or_default();
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!(
                "{here}.name: {name:?} is not an environment variable name"
            ));
        }
        let value = string(var, &here, "value")?.unwrap_or_default();
        if value.contains('\0') {
            return Err(format!("{here}.value: contains a NUL byte"));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// The kubelet decodes strictly: a field it does not know is an error, not ignored.
fn only_fields(object: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), String> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(format!("{}: unknown field", join(at, unknown))),
        None => Ok(()),
    }
}

/// A string field; absent or null is `None`; another type is an error that quotes nothing.
fn string(object: &Map<String, Value>, at: &str, field: &str) -> Result<Option<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{}: expected a string", join(at, field))),
    }
}

/// A list of strings; absent or null is empty.
fn strings(object: &Map<String, Value>, at: &str, field: &str) -> Result<Vec<String>, String> {
    let here = join(at, field);
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("{here}[{j}]: expected a string")),
            })
            .collect(),
        Some(_) => Err(format!("{here}: expected a list of strings")),
    }
}

/// `at.field`, or `field` at the top.
fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

/// Parser messages on one line (YAML errors can span several).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "--image-credential-provider-config /etc/k/config.yaml";

    /// A valid provider entry in YAML, indented for `providers:`.
    const GOOD: &str = "  - name: ecr-credential-provider
    matchImages: [\"*.dkr.ecr.*.amazonaws.com\"]
    defaultCacheDuration: 12h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
";

    fn config(providers: &str) -> String {
        format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n{providers}"
        )
    }

    #[test]
    fn reads_a_full_config_in_yaml_and_json() {
        let yaml = config(
            "  - name: ecr-credential-provider
    matchImages: [\"*.dkr.ecr.*.amazonaws.com\", \"registry.io:8080/path\"]
    defaultCacheDuration: 1h30m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials, --verbose]
    env:
      - name: AWS_PROFILE
        value: hunter2-profile
  - name: other
    matchImages: [\"gcr.io\"]
    defaultCacheDuration: \"0\"
    apiVersion: credentialprovider.kubelet.k8s.io/v1beta1
",
        );
        let specs = parse(ORIGIN, &yaml).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "ecr-credential-provider");
        assert_eq!(specs[0].default_cache_duration, Duration::from_secs(5400));
        assert_eq!(specs[0].args, ["get-credentials", "--verbose"]);
        assert_eq!(
            specs[0].env,
            [("AWS_PROFILE".to_string(), "hunter2-profile".to_string())]
        );
        assert!(
            !format!("{specs:?}").contains("hunter2"),
            "env values stay out of Debug"
        );
        assert_eq!(specs[1].default_cache_duration, Duration::ZERO);

        let json = r#"{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig",
            "providers":[{"name":"p","matchImages":["*.azurecr.io"],"defaultCacheDuration":"10m",
            "apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}"#;
        let specs = parse(ORIGIN, json).unwrap();
        assert_eq!(specs[0].match_images, ["*.azurecr.io"]);
        assert_eq!(specs[0].default_cache_duration, Duration::from_secs(600));
    }

    #[test]
    fn invalid_configs_name_the_file_and_the_field() {
        struct Case {
            input: String,
            want: &'static str,
        }
        let provider = |replace: &str, with: &str| config(&GOOD.replace(replace, with));
        let cases = [
            Case {
                input: "providers: [".into(),
                want: "not valid YAML or JSON",
            },
            Case {
                input: "- a\n- b\n".into(),
                want: "expected an object",
            },
            Case {
                input: config(GOOD).replace("kubelet.config.k8s.io/v1\n", "v1\n"),
                want: "apiVersion: \"v1\" is not one of kubelet.config.k8s.io/v1",
            },
            Case {
                input: config(GOOD).replace("kind: CredentialProviderConfig", "kind: Pod"),
                want: "kind: \"Pod\" is not \"CredentialProviderConfig\"",
            },
            Case {
                input: config("  []\n"),
                want: "providers: at least 1 item is required",
            },
            Case {
                input: "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n"
                    .into(),
                want: "providers: at least 1 item is required",
            },
            Case {
                input: config(GOOD) + "extra: 1\n",
                want: "extra: unknown field",
            },
            Case {
                input: provider(
                    "  - name: ecr-credential-provider\n",
                    "  - matchImages2: []\n",
                ),
                want: "providers[0].matchImages2: unknown field",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: \"\""),
                want: "providers[0].name: required",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: ../ecr"),
                want: "providers[0].name: cannot contain '/'",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: /usr/bin/ecr"),
                want: "providers[0].name: cannot contain '/'",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: \"..\""),
                want: "providers[0].name: cannot be '.' or '..'",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: \".\""),
                want: "providers[0].name: cannot be '.' or '..'",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: ecr provider"),
                want: "providers[0].name: cannot contain spaces",
            },
            Case {
                input: provider("name: ecr-credential-provider", "name: 7"),
                want: "providers[0].name: expected a string",
            },
            Case {
                input: config(&format!("{GOOD}{GOOD}")),
                want: "providers[1].name: duplicate \"ecr-credential-provider\" (also providers[0])",
            },
            Case {
                input: provider("    apiVersion: credentialprovider.kubelet.k8s.io/v1\n", ""),
                want: "providers[0].apiVersion: required",
            },
            Case {
                input: provider(
                    "credentialprovider.kubelet.k8s.io/v1\n",
                    "credentialprovider.kubelet.k8s.io/v2\n",
                ),
                want: "providers[0].apiVersion: \"credentialprovider.kubelet.k8s.io/v2\" is not supported",
            },
            Case {
                input: provider("[\"*.dkr.ecr.*.amazonaws.com\"]", "[]"),
                want: "providers[0].matchImages: at least 1 item is required",
            },
            Case {
                input: provider(
                    "[\"*.dkr.ecr.*.amazonaws.com\"]",
                    "[\"gcr.io\", \"registry.io:http\"]",
                ),
                want: "providers[0].matchImages[1]: \"registry.io:http\" is not a valid pattern: invalid port",
            },
            Case {
                input: provider("[\"*.dkr.ecr.*.amazonaws.com\"]", "[\"bad host.io\"]"),
                want: "providers[0].matchImages[0]: \"bad host.io\" is not a valid pattern: invalid character ' '",
            },
            Case {
                input: provider("[\"*.dkr.ecr.*.amazonaws.com\"]", "[3]"),
                want: "providers[0].matchImages[0]: expected a string",
            },
            Case {
                input: provider("    defaultCacheDuration: 12h\n", ""),
                want: "providers[0].defaultCacheDuration: required",
            },
            Case {
                input: provider("12h", "12 hours"),
                want: "providers[0].defaultCacheDuration: \"12 hours\" is not a duration",
            },
            Case {
                input: provider("12h", "-1m"),
                want: "providers[0].defaultCacheDuration: \"-1m\" must be greater than or equal to 0",
            },
            Case {
                input: provider("12h", "0"),
                want: "providers[0].defaultCacheDuration: expected a string",
            },
            Case {
                input: config(GOOD) + "    env:\n      - name: TOKEN\n        value: 7\n",
                want: "providers[0].env[0].value: expected a string",
            },
            Case {
                input: config(GOOD) + "    env:\n      - value: hunter2\n",
                want: "providers[0].env[0].name: \"\" is not an environment variable name",
            },
            Case {
                input: config(GOOD) + "    args: get-credentials\n",
                want: "providers[0].args: expected a list of strings",
            },
        ];
        for case in cases {
            let error = parse(ORIGIN, &case.input)
                .expect_err(&case.input)
                .to_string();
            assert!(error.starts_with(&format!("{ORIGIN}: ")), "{error}");
            assert!(error.contains(case.want), "{}\n→ {error}", case.input);
            assert!(!error.contains('\n'), "one line: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn a_directory_of_configs_merges_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let with_name = |name: &str| config(&GOOD.replace("ecr-credential-provider", name));
        std::fs::write(dir.path().join("20-b.yaml"), with_name("b")).unwrap();
        std::fs::write(dir.path().join("10-a.json.yml"), with_name("a")).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a config").unwrap();
        let names: Vec<String> = read(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "b"]);

        std::fs::write(dir.path().join("30-c.yaml"), with_name("a")).unwrap();
        let error = read(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("30-c.yaml: providers[0].name: duplicate \"a\""),
            "{error}"
        );
        assert!(error.contains("10-a.json.yml: providers[0]"), "{error}");

        let empty = tempfile::tempdir().unwrap();
        let error = read(empty.path()).unwrap_err().to_string();
        assert!(error.contains("no *.json, *.yaml or *.yml file"), "{error}");
        let missing = read(Path::new("/nonexistent/cp.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with(
                "--image-credential-provider-config /nonexistent/cp.yaml: cannot read"
            ),
            "{missing}"
        );
    }
}
