//! The closed list of failure reasons (documented in `docs/reasons.md`): the `reason` label and JSON field.
//! Every failed check or pull is explained by exactly one of these, never by free text.

use serde::{Deserialize, Serialize};

mod classify;
pub use classify::classify_runtime_message;

/// Why a check or a pull failed. The string form is the metric label and JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InvalidReference,
    DnsNxdomain,
    DnsServfail,
    DnsTimeout,
    DnsNoAddresses,
    TcpRefused,
    TcpTimeout,
    TcpUnreachable,
    TlsUnknownAuthority,
    TlsExpired,
    TlsHostnameMismatch,
    TlsHandshake,
    ProxyError,
    NotARegistry,
    RegistryUnavailable,
    AuthRequired,
    CredentialsUnavailable,
    AuthFailed,
    Forbidden,
    RepositoryUnknown,
    ManifestUnknown,
    PlatformMismatch,
    RateLimited,
    PullTimeout,
    DiskFull,
    Blocked,
    NeverPull,
    SignatureInvalid,
    RuntimeError,
    Unknown,
}

impl Reason {
    /// Every reason, grouped by the check that gives it (dashboards and tests iterate over it).
    pub const ALL: [Reason; 30] = [
        Reason::InvalidReference,
        Reason::DnsNxdomain,
        Reason::DnsServfail,
        Reason::DnsTimeout,
        Reason::DnsNoAddresses,
        Reason::TcpRefused,
        Reason::TcpTimeout,
        Reason::TcpUnreachable,
        Reason::TlsUnknownAuthority,
        Reason::TlsExpired,
        Reason::TlsHostnameMismatch,
        Reason::TlsHandshake,
        Reason::ProxyError,
        Reason::NotARegistry,
        Reason::RegistryUnavailable,
        Reason::AuthRequired,
        Reason::CredentialsUnavailable,
        Reason::AuthFailed,
        Reason::Forbidden,
        Reason::RepositoryUnknown,
        Reason::ManifestUnknown,
        Reason::PlatformMismatch,
        Reason::RateLimited,
        Reason::PullTimeout,
        Reason::DiskFull,
        Reason::Blocked,
        Reason::NeverPull,
        Reason::SignatureInvalid,
        Reason::RuntimeError,
        Reason::Unknown,
    ];

    /// The fixed label value, e.g. `dns_nxdomain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidReference => "invalid_reference",
            Reason::DnsNxdomain => "dns_nxdomain",
            Reason::DnsServfail => "dns_servfail",
            Reason::DnsTimeout => "dns_timeout",
            Reason::DnsNoAddresses => "dns_no_addresses",
            Reason::TcpRefused => "tcp_refused",
            Reason::TcpTimeout => "tcp_timeout",
            Reason::TcpUnreachable => "tcp_unreachable",
            Reason::TlsUnknownAuthority => "tls_unknown_authority",
            Reason::TlsExpired => "tls_expired",
            Reason::TlsHostnameMismatch => "tls_hostname_mismatch",
            Reason::TlsHandshake => "tls_handshake",
            Reason::ProxyError => "proxy_error",
            Reason::NotARegistry => "not_a_registry",
            Reason::RegistryUnavailable => "registry_unavailable",
            Reason::AuthRequired => "auth_required",
            Reason::CredentialsUnavailable => "credentials_unavailable",
            Reason::AuthFailed => "auth_failed",
            Reason::Forbidden => "forbidden",
            Reason::RepositoryUnknown => "repository_unknown",
            Reason::ManifestUnknown => "manifest_unknown",
            Reason::PlatformMismatch => "platform_mismatch",
            Reason::RateLimited => "rate_limited",
            Reason::PullTimeout => "pull_timeout",
            Reason::DiskFull => "disk_full",
            Reason::Blocked => "blocked",
            Reason::NeverPull => "never_pull",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::RuntimeError => "runtime_error",
            Reason::Unknown => "unknown",
        }
    }

    /// One sentence a person can act on, given the registry (and endpoint URL) concerned.
    pub fn fix(self, registry: &str, endpoint: &str) -> String {
        let host = host_of(endpoint);
        match self {
            Reason::InvalidReference => "correct the image name in the pod spec: lowercase repository, optional :tag or @sha256:digest".into(),
            Reason::DnsNxdomain if is_public_registry(host) => format!("{host} is a public registry that exists: this node's resolver cannot resolve public names (air-gapped or split DNS): route pulls of {registry} to a mirror the node can reach (containerd: /etc/containerd/certs.d/{registry}/hosts.toml; CRI-O: a [[registry]] mirror in /etc/containers/registries.conf), or give the node's resolver (resolv.conf) upstream forwarders"),
            Reason::DnsNxdomain => format!("check the spelling of {host}; if it is an internal name, make it resolvable from the node's resolver (resolv.conf)"),
            Reason::DnsServfail => "the node's DNS server fails for this name: check the upstream resolver or the zone's delegation".into(),
            Reason::DnsTimeout => "the node's DNS server does not answer: check the nameserver in resolv.conf and that UDP/TCP 53 egress is allowed".into(),
            Reason::DnsNoAddresses => format!("{host} exists in DNS but has no A/AAAA records: add them or use the right host name"),
            Reason::TcpRefused => format!("nothing listens at {endpoint}: check the port and that the registry is running"),
            Reason::TcpTimeout => format!("connections to {endpoint} are dropped: allow egress from the nodes to it (firewall, security group, NetworkPolicy on hostNetwork)"),
            Reason::TcpUnreachable => format!("the node has no route to {endpoint}: check routing and the node's network"),
            Reason::TlsUnknownAuthority => format!("make the node trust the issuing CA: add it to the system trust store or as `ca` in certs.d/{registry}/hosts.toml"),
            Reason::TlsExpired => format!("renew the certificate of {endpoint} (or fix the node's clock)"),
            Reason::TlsHostnameMismatch => format!("reissue the certificate of {endpoint} with {host} in its subject alternative names, or use the name it is valid for"),
            Reason::TlsHandshake => format!("{endpoint} does not speak TLS as expected: if it is plain HTTP, configure it as an insecure registry on the runtime, or enable TLS on it; if it requires a client certificate, give the runtime one (hosts.toml `client`)"),
            Reason::ProxyError => "the HTTP proxy refused or failed: check HTTPS_PROXY/NO_PROXY for the runtime and the proxy's allow-list".into(),
            Reason::NotARegistry => format!("{endpoint} answers but is not a registry API (/v2/): check the host name, port and any load balancer path routing"),
            Reason::RegistryUnavailable => format!("{registry} is failing on its side (5xx, or an answer no runtime can use): check the registry's health or status page, then retry"),
            Reason::AuthRequired => format!("create an imagePullSecret for {registry} and reference it from the pod (or the service account)"),
            Reason::CredentialsUnavailable => format!("a credential source the kubelet uses for {registry} failed (see the evidence): fix the credential provider plugin or its config, or the referenced pull secret (present, of type kubernetes.io/dockerconfigjson, well-formed)"),
            Reason::AuthFailed => format!("the credentials for {registry} were rejected: update the imagePullSecret's username/password or token"),
            Reason::Forbidden => format!("the credentials for {registry} lack pull permission on this repository: grant it"),
            Reason::RepositoryUnknown => format!("the repository does not exist in {registry}: check the image name (and its organisation prefix)"),
            Reason::ManifestUnknown => "the tag or digest does not exist: check the tag (see the nearest tags) or push the image".into(),
            Reason::PlatformMismatch => "build and push the image for the node's platform (multi-arch), or schedule the pod on matching nodes".into(),
            Reason::RateLimited => format!("{registry} is throttling this node: authenticate pulls, use a pull-through mirror, or wait for the window to reset"),
            Reason::PullTimeout => "the pull ran out of time: check bandwidth to the registry and the image size".into(),
            Reason::DiskFull => "free space on the node's image filesystem (crictl rmi --prune) or enlarge it".into(),
            Reason::Blocked => format!("the runtime's registry configuration blocks {registry}: use an allowed registry or change the policy"),
            Reason::NeverPull => "the pod has imagePullPolicy: Never and the image is not on the node: pre-load it or change the policy".into(),
            Reason::SignatureInvalid => "the image's signature was rejected by the node's policy: sign it with an accepted key or fix the policy".into(),
            Reason::RuntimeError => "the container runtime failed: check its logs (journalctl -u containerd) on this node".into(),
            Reason::Unknown => "run `pullwatch diagnose IMAGE` on the node and check the runtime's logs".into(),
        }
    }
}

/// Public registries and their API and token hosts: names that exist, so NXDOMAIN for one says
/// the node cannot resolve public names, not that the name is misspelt.
const PUBLIC_REGISTRY_HOSTS: [&str; 14] = [
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "auth.docker.io",
    "production.cloudflare.docker.com",
    "ghcr.io",
    "quay.io",
    "registry.k8s.io",
    "gcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "nvcr.io",
    "registry.gitlab.com",
    "docker.elastic.co",
];

/// Suffixes under which every name is a public registry host (regional GCR, Artifact Registry).
const PUBLIC_REGISTRY_SUFFIXES: [&str; 2] = [".gcr.io", ".pkg.dev"];

fn is_public_registry(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    PUBLIC_REGISTRY_HOSTS.contains(&host.as_str())
        || PUBLIC_REGISTRY_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// `host` of `scheme://host:port` (IPv6 without brackets); the input itself when it has no scheme.
fn host_of(endpoint: &str) -> &str {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_serde_names() {
        for reason in Reason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }

    #[test]
    fn fixes_name_the_host_not_the_port() {
        let fix = Reason::DnsNxdomain.fix("registy.test:5000", "https://registy.test:5000");
        assert!(fix.contains("spelling of registy.test;"), "{fix}");
        assert_eq!(host_of("https://[::1]:5000"), "::1");
        assert_eq!(host_of("http://reg.local"), "reg.local");
    }

    #[test]
    fn nxdomain_of_a_public_registry_is_the_resolver_not_a_typo() {
        let cases = [
            ("docker.io", "https://registry-1.docker.io", true),
            ("ghcr.io", "https://ghcr.io", true),
            (
                "europe-docker.pkg.dev",
                "https://europe-docker.pkg.dev",
                true,
            ),
            ("eu.gcr.io", "https://eu.gcr.io", true),
            ("registy.example", "https://registy.example", false),
            ("notghcr.io", "https://notghcr.io", false),
        ];
        for (registry, endpoint, public) in cases {
            let fix = Reason::DnsNxdomain.fix(registry, endpoint);
            assert_eq!(
                fix.contains("cannot resolve public names"),
                public,
                "{registry}: {fix}"
            );
            assert_eq!(
                fix.contains("check the spelling"),
                !public,
                "{registry}: {fix}"
            );
        }
        let hub = Reason::DnsNxdomain.fix("docker.io", "https://registry-1.docker.io");
        assert!(
            hub.contains("/etc/containerd/certs.d/docker.io/hosts.toml"),
            "{hub}"
        );
    }

    #[test]
    fn labels_are_unique() {
        let mut seen: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Reason::ALL.len());
    }
}
