//! The agent's own client for the Kubernetes API: the three kinds of call it makes (list and
//! watch this node's pods, GET a secret or a service account by name, POST an Event) over
//! HTTP/1.1, every answer read against a cap and every wait bounded. A general client (kube-rs)
//! brought a YAML and a JSONPath engine with a regex engine for kubeconfig features the agent
//! does not use, a megabyte and more of resident code on every node.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::bounded_file;
use crate::text::{clip, error_chain};

/// How the agent proves who it is to the API server.
#[derive(Clone)]
pub enum Auth {
    None,
    Bearer(String),
    /// Read again for every request: a service account token rotates (about hourly) in place.
    TokenFile(PathBuf),
    Basic {
        username: String,
        password: String,
    },
}

/// The API server's address and credentials, as a kubeconfig or the pod's service account give them.
/// Its `Debug` shows which credentials, never their content.
#[derive(Clone)]
pub struct ApiConfig {
    /// `https://host:port` (or `http://`), no trailing slash.
    pub server: String,
    /// PEM certificates trusted for the server; none means the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    /// A client certificate and its key, PEM, one after the other.
    pub identity_pem: Option<Vec<u8>>,
    pub auth: Auth,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_string(),
            Auth::Bearer(_) => "bearer token".to_string(),
            Auth::TokenFile(path) => format!("token file {}", path.display()),
            Auth::Basic { username, .. } => format!("basic, user {username:?}"),
        };
        f.debug_struct("ApiConfig")
            .field("server", &self.server)
            .field(
                "ca",
                &self
                    .ca_pem
                    .as_ref()
                    .map(|pem| format!("{} bytes", pem.len())),
            )
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("client_certificate", &self.identity_pem.is_some())
            .field("auth", &auth)
            .finish()
    }
}

/// What went wrong with a call; never the content of an answer (a secret's data, a proxy's echo).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The API server said no: its HTTP status and the Status object's `reason`.
    #[error("the API server answered {code} {reason}")]
    Status { code: u16, reason: String },
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("the answer is over {} KiB", .0 / 1024)]
    TooLarge(usize),
    /// Where the JSON went wrong, without quoting it.
    #[error("cannot decode the answer ({0})")]
    Decode(String),
    #[error("{0}")]
    Credentials(String),
}

/// A Status object's fields that say why (the rest, `message` included, is not kept).
#[derive(serde::Deserialize)]
struct Status {
    #[serde(default)]
    reason: String,
}

/// The most of an error answer read to find its `reason`.
const MAX_STATUS: usize = 64 * 1024;

/// A client for one API server.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    server: String,
    auth: Auth,
}

impl ApiClient {
    /// A client for `config`; an unusable certificate or key is an error naming it.
    pub fn new(config: ApiConfig) -> Result<Self, ApiError> {
        crate::trust::install_ring_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::http_client::USER_AGENT)
            // An API server does not redirect these calls: a 3xx is an answer (an error), not followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(2)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .no_proxy()
            .tls_built_in_root_certs(false);
        builder = match &config.ca_pem {
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| ApiError::Credentials(format!("certificate-authority: {e}")))?;
                if certs.is_empty() {
                    return Err(ApiError::Credentials(
                        "certificate-authority: no PEM certificate in it".into(),
                    ));
                }
                certs
                    .into_iter()
                    .fold(builder, |b, c| b.add_root_certificate(c))
            }
            None => crate::trust::system_roots()
                .into_iter()
                .filter_map(|der| reqwest::Certificate::from_der(&der).ok())
                .fold(builder, |b, c| b.add_root_certificate(c)),
        };
        if config.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &config.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| ApiError::Credentials(format!("client certificate or key: {e}")))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Credentials(error_chain(&e)))?;
        Ok(ApiClient {
            http,
            server: config.server.trim_end_matches('/').to_string(),
            auth: config.auth,
        })
    }

    /// GETs `path` (with its query) and decodes the answer, at most `cap` bytes within `timeout`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        cap: usize,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        decode(&self.get_bytes(path, cap, timeout).await?)
    }

    /// GETs `path`'s answer as it came, at most `cap` bytes within `timeout`.
    pub async fn get_bytes(
        &self,
        path: &str,
        cap: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let call = async {
            let response = self.send(self.http.get(self.url(path))).await?;
            read_capped(response, cap).await
        };
        bounded(timeout, call).await
    }

    /// POSTs `body` as JSON to `path`; the answer (the object created) is read, capped, only so
    /// its connection can be used again, and not kept.
    pub async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
        let request = self
            .http
            .post(self.url(path))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        let call = async {
            let response = self.send(request).await?;
            // An answer over the cap only costs the connection its reuse.
            let _ = read_capped(response, MAX_STATUS).await;
            Ok(())
        };
        bounded(timeout, call).await
    }

    /// Starts a streaming GET (a watch): the response once its headers are in, within `timeout`.
    pub async fn stream(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        bounded(timeout, self.send(self.http.get(self.url(path)))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// Sends with the credentials; a status other than 2xx is [`ApiError::Status`].
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let request = match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::TokenFile(path) => request.bearer_auth(read_token(path)?),
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
        }
        .header(http::header::ACCEPT, "application/json");
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let reason = read_capped(response, MAX_STATUS)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<Status>(&body).ok())
            .map(|s| s.reason)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        Err(ApiError::Status {
            code: status.as_u16(),
            reason: clip(&reason, 64),
        })
    }
}

/// The token in `path`, trimmed; its content never appears in an error.
fn read_token(path: &std::path::Path) -> Result<String, ApiError> {
    let text = bounded_file::read_to_string(path, bounded_file::TOKEN)
        .map_err(|e| ApiError::Credentials(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ApiError::Credentials(format!(
            "{}: the token file is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(ApiError::Timeout(timeout)))
}

/// The whole body, refused past `cap` bytes (a `Content-Length` over it is refused unread).
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ApiError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ApiError::TooLarge(cap));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ApiError::Transport(error_chain(&e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(ApiError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// JSON into `T`; an error says where, never what was there.
pub fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "not the expected object",
            serde_json::error::Category::Eof => "cut short",
        };
        ApiError::Decode(format!("{what} at line {} column {}", e.line(), e.column()))
    })
}

/// `value` made safe for a path segment or a query value (RFC 3986 unreserved kept).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_errors_never_quote_the_answer() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Secret {
            data: std::collections::BTreeMap<String, String>,
        }
        for (body, want) in [
            (
                &br#"{"data": {"k": 12345}} "#[..],
                "not the expected object at line 1 column",
            ),
            (b"{\"data\": hunter2", "not JSON at line 1 column"),
            (
                b"{\"data\": {\"k\": \"hunter2\"",
                "cut short at line 1 column",
            ),
        ] {
            let error = decode::<Secret>(body).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
            assert!(
                !error.contains("hunter2") && !error.contains("12345"),
                "{error}"
            );
        }
    }

    #[test]
    fn debug_never_shows_a_credential() {
        let config = ApiConfig {
            server: "https://10.0.0.1:6443".into(),
            ca_pem: Some(b"CA".to_vec()),
            insecure_skip_verify: false,
            identity_pem: Some(b"KEY-hunter2".to_vec()),
            auth: Auth::Basic {
                username: "al".into(),
                password: "hunter2".into(),
            },
        };
        let shown = format!("{config:?}");
        assert!(
            shown.contains("basic, user") && shown.contains("2 bytes"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let bearer = ApiConfig {
            auth: Auth::Bearer("hunter2".into()),
            ..config
        };
        assert!(!format!("{bearer:?}").contains("hunter2"));
    }

    #[test]
    fn path_values_are_escaped() {
        assert_eq!(escape("spec.nodeName=node-1"), "spec.nodeName%3Dnode-1");
        assert_eq!(escape("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
        assert_eq!(escape("ünï"), "%C3%BCn%C3%AF");
    }
}
