//! Running one credential provider plugin as the kubelet does (request on stdin, response on
//! stdout, config `args` and `env`), bounded in time and output, its process group killed after.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::cache::CacheKeyType;
use crate::credentials::{Credential, Secret};
use crate::go_duration::{GoDuration, parse_go_duration};

/// The kubelet gives every plugin run one minute (`ExecPlugin`'s catch-all timeout).
pub(super) const KUBELET_TIMEOUT: Duration = Duration::from_secs(60);
/// A response larger than this is refused (real ones are well under a kilobyte per registry).
pub(super) const MAX_STDOUT: usize = 1024 * 1024;
/// Stderr kept from a plugin (the rest is read and dropped so it cannot block on a full pipe).
const MAX_STDERR: usize = 64 * 1024;
/// Stderr shown as evidence in a failure, in characters.
const EVIDENCE_CHARS: usize = 300;
/// How long to wait for a killed plugin to be reaped and its stderr to close.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// Why a plugin cannot be run from the bin dir; shared by loading and each run.
pub(super) fn resolve(bin_dir: &Path, name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = bin_dir.join(name);
    let dir = bin_dir
        .canonicalize()
        .map_err(|e| format!("cannot read {}: {e}", bin_dir.display()))?;
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("plugin {} does not exist", path.display()));
        }
        Err(e) => return Err(format!("cannot read plugin {}: {e}", path.display())),
    };
    // Symlinks are followed only while they stay in the bin dir: pullwatch runs as root and
    // runs nothing the node's admin did not put there.
    if real.parent() != Some(dir.as_path()) {
        return Err(format!(
            "plugin {} resolves to {}, outside {}; pullwatch does not run it (the kubelet would)",
            path.display(),
            real.display(),
            dir.display()
        ));
    }
    let meta = std::fs::metadata(&real)
        .map_err(|e| format!("cannot read plugin {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("plugin {} is not a file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("plugin {} is not executable", path.display()));
    }
    Ok(real)
}

/// What the plugin is run with.
pub(super) struct Invocation<'a> {
    pub name: &'a str,
    pub bin_dir: &'a Path,
    pub api_version: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
}

/// A valid `CredentialProviderResponse`.
pub(super) struct Response {
    pub cache_key_type: CacheKeyType,
    /// `None`: the provider's default; `Some(ZERO)`: do not cache.
    pub cache_duration: Option<Duration>,
    /// The `auth` map: key, username, password, in the order written.
    pub auth: Vec<(String, String, Secret)>,
}

impl Response {
    /// The `auth` map's entries as credentials, in the order written.
    pub fn credentials(&mut self) -> Vec<Credential> {
        std::mem::take(&mut self.auth)
            .into_iter()
            .map(|(key, username, password)| Credential {
                username,
                password,
                key,
            })
            .collect()
    }
}

/// Runs the plugin for `image` until `deadline`: never past it, never reading more than the
/// caps; failures say what went wrong with the plugin's stderr, never its stdout.
/// `runs` counts the plugins actually started.
pub(super) async fn run(
    call: &Invocation<'_>,
    image: &str,
    deadline: Instant,
    runs: &AtomicU64,
) -> Result<Response, String> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let path = resolve(call.bin_dir, call.name)?;
    let request = serde_json::json!({
        "apiVersion": call.api_version,
        "kind": "CredentialProviderRequest",
        "image": image,
    })
    .to_string();
    let mut child = tokio::process::Command::new(&path)
        .args(call.args)
        .envs(call.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    runs.fetch_add(1, Ordering::Relaxed);
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(group);
        return Err("cannot connect to the plugin's stdin/stdout/stderr".into());
    };
    // Fed and drained on their own so a plugin that ignores stdin or floods stderr cannot stall us.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(request.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });
    let stderr_reader = tokio::spawn(read_capped(stderr, MAX_STDERR));

    let outcome = tokio::time::timeout_at(deadline, async {
        let (out, oversized) = read_capped(stdout, MAX_STDOUT).await;
        if oversized {
            return Err(format!("wrote more than {MAX_STDOUT} bytes on stdout"));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for the plugin: {e}"))?;
        Ok((out, status))
    })
    .await;
    let result = match outcome {
        Ok(Ok((out, status))) if status.success() => Ok(out),
        Ok(Ok((_, status))) => Err(match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("ended by {status}"),
        }),
        Ok(Err(problem)) => Err(problem),
        Err(_) => Err(format!(
            "did not answer within {}",
            crate::text::short_duration(budget)
        )),
    };
    writer.abort();
    let problem = match result {
        Ok(out) => match parse_response(&out, call.api_version) {
            Ok(response) => {
                stderr_reader.abort();
                return Ok(response);
            }
            Err(problem) => problem,
        },
        Err(problem) => {
            kill_group(group);
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
            problem
        }
    };
    let evidence = match tokio::time::timeout(REAP_WAIT, stderr_reader).await {
        Ok(Ok((bytes, _))) => evidence(&bytes),
        _ => String::new(),
    };
    Err(if evidence.is_empty() {
        problem
    } else {
        format!("{problem}; stderr: {evidence:?}")
    })
}

/// Sends SIGKILL to the plugin's process group (it was made its leader), so children it left
/// behind go too. Errors (already gone) do not matter.
fn kill_group(group: Option<i32>) {
    if let Some(pid) = group.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Reads `pipe` to its end, keeping at most `cap` bytes; `true` when there was more. Stops at
/// the first byte past the cap.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return (kept, false),
            Ok(n) => {
                if kept.len() + n > cap {
                    let room = cap - kept.len();
                    kept.extend_from_slice(&chunk[..room]);
                    return (kept, true);
                }
                kept.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// The plugin's stderr as evidence: text on one line, control characters gone, capped.
pub(super) fn evidence(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.chars().count() > EVIDENCE_CHARS {
        let cut: String = words.chars().take(EVIDENCE_CHARS).collect();
        format!("{cut}…")
    } else {
        words
    }
}

/// Checks and reads a response like the kubelet (apiVersion equal to the request's, kind,
/// strict fields, a known `cacheKeyType`). Problems never quote the response.
pub(super) fn parse_response(out: &[u8], api_version: &str) -> Result<Response, String> {
    let value: Value = serde_json::from_slice(out).map_err(|e| {
        format!(
            "stdout is not a JSON response (at line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(top) = value else {
        return Err("stdout is not a JSON object".into());
    };
    let text = |field: &str| match top.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("response {field} is not a string")),
    };
    let got_version = text("apiVersion")?.unwrap_or_default();
    if got_version != api_version {
        return Err(format!(
            "response apiVersion is {}, expected {api_version}",
            shown(got_version)
        ));
    }
    let kind = text("kind")?.unwrap_or_default();
    if kind != "CredentialProviderResponse" {
        return Err(format!(
            "response kind is {}, expected CredentialProviderResponse",
            shown(kind)
        ));
    }
    if let Some(field) = top.keys().find(|k| {
        ![
            "apiVersion",
            "kind",
            "cacheKeyType",
            "cacheDuration",
            "auth",
        ]
        .contains(&k.as_str())
    }) {
        return Err(format!("response has an unknown field {}", shown(field)));
    }
    let cache_key_type = text("cacheKeyType")?
        .and_then(CacheKeyType::parse)
        .ok_or_else(|| "response cacheKeyType is not Image, Registry or Global".to_string())?;
    let cache_duration = match text("cacheDuration")? {
        None => None,
        Some(d) => Some(match parse_go_duration(d) {
            Ok(GoDuration::Positive(d)) => d,
            // Already expired: nothing to keep.
            Ok(GoDuration::Negative) => Duration::ZERO,
            Err(_) => return Err("response cacheDuration is not a duration".into()),
        }),
    };
    let auth = match top.get("auth") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => auth_entries(map)?,
        Some(_) => return Err("response auth is not an object".into()),
    };
    Ok(Response {
        cache_key_type,
        cache_duration,
        auth,
    })
}

/// The `auth` map's entries; a malformed one fails the whole response, as in the kubelet.
fn auth_entries(map: &Map<String, Value>) -> Result<Vec<(String, String, Secret)>, String> {
    let mut entries = Vec::with_capacity(map.len());
    for (key, entry) in map {
        let at = format!("response auth[{}]", shown(key));
        let Value::Object(entry) = entry else {
            return Err(format!("{at} is not an object"));
        };
        if let Some(field) = entry.keys().find(|k| *k != "username" && *k != "password") {
            return Err(format!("{at} has an unknown field {}", shown(field)));
        }
        let field = |name: &str| match entry.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("{at}.{name} is not a string")),
        };
        entries.push((
            key.clone(),
            field("username")?,
            Secret::new(field("password")?),
        ));
    }
    Ok(entries)
}

/// A name from the response shown in an error only when it looks like a name (an apiVersion, a
/// registry key): short, no spaces or quotes; anything else could be a secret.
fn shown(text: &str) -> String {
    let plain = !text.is_empty()
        && text.len() <= 100
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "./:-_*[]".contains(c));
    if plain {
        format!("{text:?}")
    } else {
        "(not shown)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    #[test]
    fn reads_responses_like_the_kubelet() {
        struct Case {
            input: &'static str,
            want: Result<(CacheKeyType, Option<u64>, usize), &'static str>,
        }
        let cases = [
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"5m","auth":{"r.io":{"username":"u","password":"hunter2"}}}"#,
                want: Ok((CacheKeyType::Registry, Some(300), 1)),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image"}"#,
                want: Ok((CacheKeyType::Image, None, 0)),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Global","cacheDuration":"-1s","auth":{}}"#,
                want: Ok((CacheKeyType::Global, Some(0), 0)),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Image"}"#,
                want: Err(
                    "response apiVersion is \"credentialprovider.kubelet.k8s.io/v1beta1\", expected credentialprovider.kubelet.k8s.io/v1",
                ),
            },
            Case {
                input: r#"{"apiVersion":"hunter2 is here","kind":"CredentialProviderResponse","cacheKeyType":"Image"}"#,
                want: Err("response apiVersion is (not shown)"),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","cacheKeyType":"Image"}"#,
                want: Err("response kind is \"CredentialProviderRequest\""),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Node"}"#,
                want: Err("cacheKeyType is not Image, Registry or Global"),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse"}"#,
                want: Err("cacheKeyType is not Image, Registry or Global"),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","cacheDuration":"soon"}"#,
                want: Err("cacheDuration is not a duration"),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"r.io":{"username":"u","password":"hunter2","token":"hunter2"}}}"#,
                want: Err("response auth[\"r.io\"] has an unknown field \"token\""),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"r.io":{"username":"u","password":7}}}"#,
                want: Err("response auth[\"r.io\"].password is not a string"),
            },
            Case {
                input: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","extra":1}"#,
                want: Err("unknown field \"extra\""),
            },
            Case {
                input: "hunter2",
                want: Err("stdout is not a JSON response"),
            },
            Case {
                input: "[\"hunter2\"]",
                want: Err("stdout is not a JSON object"),
            },
        ];
        for case in cases {
            let got = parse_response(case.input.as_bytes(), V1).map(|r| {
                (
                    r.cache_key_type,
                    r.cache_duration.map(|d| d.as_secs()),
                    r.auth.len(),
                )
            });
            match (&got, &case.want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{}", case.input),
                (Err(e), Err(want)) => {
                    assert!(e.contains(want), "{}\n→ {e}", case.input);
                    assert!(!e.contains("hunter2"), "{e}");
                }
                (got, _) => panic!("{}: got {:?}", case.input, got.as_ref().map(|_| ())),
            }
        }
    }

    #[test]
    fn stderr_evidence_is_one_clean_capped_line() {
        struct Case {
            input: Vec<u8>,
            want: String,
        }
        let cases = [
            Case {
                input: b"  error: no\tcredentials\n\x1b[31mred\x1b[0m\n".to_vec(),
                want: "error: no credentials [31mred [0m".into(),
            },
            Case {
                input: vec![0xff, b'o', b'k'],
                want: "\u{fffd}ok".into(),
            },
            Case {
                input: "x".repeat(1000).into_bytes(),
                want: format!("{}…", "x".repeat(EVIDENCE_CHARS)),
            },
        ];
        for case in cases {
            assert_eq!(evidence(&case.input), case.want);
        }
    }
}
