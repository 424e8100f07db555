//! Registry credentials as the kubelet has them, and where each came from. Secrets stay in
//! [`Secret`]: no `Display`, a redacting `Debug`; nothing here ever prints a value.

mod docker_config;
pub mod provider;

pub use self::docker_config::{CredentialsError, Keyring};

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
