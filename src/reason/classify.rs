//! Runtime pull messages → reasons: what containerd, CRI-O and the kubelet say when a pull fails,
//! matched by the fragments their sources produce (tests/fixtures/containerd_errors.json holds real ones).

use super::Reason;

/// Fragments, lower-case, tried in order: the first rule with a matching fragment decides.
/// Order matters where messages nest (a proxy's dial error also says `dial tcp`;
/// `pull access denied` also says `denied`; containerd ends many messages with `: not found`).
/// A dial timeout is checked between [`BEFORE_DIAL_TIMEOUT`] and [`AFTER_DIAL_TIMEOUT`].
const BEFORE_DIAL_TIMEOUT: &[(Reason, &[&str])] = &[
    (
        Reason::NeverPull,
        &[
            "errimageneverpull",
            "is not present with pull policy of never",
        ],
    ),
    (
        Reason::SignatureInvalid,
        &["signaturevalidationfailed", "source image rejected"],
    ),
    (Reason::Blocked, &["is blocked in"]),
    (
        Reason::InvalidReference,
        &[
            "invalid reference format",
            "invalidimagename",
            "couldn't parse image reference",
            "did not resolve to an alias",
        ],
    ),
    (
        Reason::DiskFull,
        &["no space left on device", "disk quota exceeded"],
    ),
    (Reason::ProxyError, &["proxyconnect"]),
    (
        Reason::DnsNxdomain,
        &["no such host", "name or service not known"],
    ),
    (
        Reason::DnsServfail,
        &["server misbehaving", "temporary failure in name resolution"],
    ),
    (
        Reason::TlsUnknownAuthority,
        &["certificate signed by unknown authority"],
    ),
    (
        Reason::TlsExpired,
        &[
            "certificate has expired or is not yet valid",
            "certificate has expired",
        ],
    ),
    (
        Reason::TlsHostnameMismatch,
        &[
            "certificate is valid for",
            "certificate is not valid for any names",
            "because it doesn't contain any ip sans",
            "relies on legacy common name field",
        ],
    ),
    (
        Reason::TlsHandshake,
        &[
            "server gave http response to https client",
            // Go's TLS server to a plain-HTTP request; registries answer 400 to little else.
            "400 bad request",
            "first record does not look like a tls handshake",
            "tls handshake timeout",
            "remote error: tls:",
            "tls: ",
            "x509: ",
        ],
    ),
];

const AFTER_DIAL_TIMEOUT: &[(Reason, &[&str])] = &[
    (Reason::TcpRefused, &["connection refused"]),
    (
        Reason::TcpUnreachable,
        &[
            "no route to host",
            "network is unreachable",
            "host is unreachable",
        ],
    ),
    (
        Reason::RateLimited,
        &[
            "429 too many requests",
            "toomanyrequests",
            "too many requests",
            "pull rate limit",
        ],
    ),
    (
        // The kubelet's Event when a referenced pull secret cannot be read.
        Reason::CredentialsUnavailable,
        &[
            "failedtoretrieveimagepullsecret",
            "unable to retrieve some image pull secrets",
        ],
    ),
    (
        Reason::AuthFailed,
        &[
            "incorrect username or password",
            "failed to fetch oauth token",
        ],
    ),
    (
        Reason::AuthRequired,
        &[
            "pull access denied",
            // containers/image says it for any 401 from a token server, credentials or none.
            "invalid username/password",
            "401 unauthorized",
            "unauthorized: authentication required",
            "authentication required",
            "failed to fetch anonymous token",
            "insufficient_scope",
        ],
    ),
    (
        Reason::Forbidden,
        &[
            "403 forbidden",
            "requested access to the resource is denied",
            "denied: ",
        ],
    ),
    (
        Reason::PlatformMismatch,
        &[
            "no match for platform in manifest",
            "no image found in manifest list for architecture",
            "no matching manifest for",
        ],
    ),
    (
        Reason::NotARegistry,
        &[
            "unexpected media type text/html",
            "unexpected media type",
            "invalid character '<' looking for beginning of value",
        ],
    ),
    (
        Reason::RegistryUnavailable,
        &[
            "500 internal server error",
            "502 bad gateway",
            "503 service unavailable",
            "504 gateway timeout",
            "because the registry is unavailable",
            "client.timeout exceeded while awaiting headers",
        ],
    ),
    (
        Reason::RepositoryUnknown,
        &[
            "name unknown",
            "name_unknown",
            "repository name not known to registry",
        ],
    ),
    (
        Reason::ManifestUnknown,
        &["manifest unknown", "manifest_unknown", ": not found"],
    ),
    (
        Reason::PullTimeout,
        &["context deadline exceeded", "code = deadlineexceeded"],
    ),
    (
        Reason::RuntimeError,
        &[
            "failed to unpack image",
            "failed to extract layer",
            "failed to inspect image",
            "imageinspecterror",
            "code = unavailable",
        ],
    ),
];

/// HTTP reason phrases, lower-case: alone after a request's URL, they are a proxy's answer to
/// `CONNECT` (Go reports a refused tunnel by the bare status text).
const STATUS_TEXTS: &[&str] = &[
    "bad request",
    "unauthorized",
    "forbidden",
    "not found",
    "method not allowed",
    "proxy authentication required",
    "too many requests",
    "internal server error",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
];

/// The reason for a runtime's pull error message (a CRI `PullImage` error, or a kubelet
/// container status or event message). `Reason::Unknown` when nothing known matches.
pub fn classify_runtime_message(message: &str) -> Reason {
    let m = message.to_ascii_lowercase();
    if refused_tunnel(&m) {
        return Reason::ProxyError;
    }
    // A lookup that timed out says `i/o timeout` too; it is the resolver's, not the TCP dial's.
    if m.contains("lookup ") && (m.contains("i/o timeout") || m.contains("no answer from dns")) {
        return Reason::DnsTimeout;
    }
    let first_match = |rules: &[(Reason, &[&str])]| {
        rules
            .iter()
            .find(|(_, fragments)| fragments.iter().any(|f| m.contains(f)))
            .map(|(reason, _)| *reason)
    };
    if let Some(reason) = first_match(BEFORE_DIAL_TIMEOUT) {
        return reason;
    }
    if dial_timed_out(&m) {
        return Reason::TcpTimeout;
    }
    first_match(AFTER_DIAL_TIMEOUT).unwrap_or(Reason::Unknown)
}

/// `dial tcp 10.0.0.5:5000: i/o timeout`, or the kernel giving up (`connection timed out`).
fn dial_timed_out(m: &str) -> bool {
    (m.contains("dial tcp") && m.contains("i/o timeout")) || m.contains("connection timed out")
}

/// `…: Head "https://host/v2/…": Forbidden`: a transport error that is only a status text.
fn refused_tunnel(m: &str) -> bool {
    m.rsplit_once("\": ")
        .is_some_and(|(_, tail)| STATUS_TEXTS.contains(&tail.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a message form comes from. Real containerd texts live in the fixture
    /// (tests/fixtures/containerd_errors.json, checked by tests/real/containerd_errors.rs); the forms
    /// here were written after reading the named public sources, not recorded from a runtime.
    #[derive(Debug)]
    enum Origin {
        /// kubernetes pkg/kubelet/images/image_manager.go (container status / event messages).
        Kubelet,
        /// containers/image (docker/, signature/, sysregistriesv2), the library CRI-O pulls with.
        CriO,
        /// containerd remotes/docker (authorizer, resolver) paths not reachable in the tests.
        ContainerdSource,
        /// Go's net, net/http and crypto/x509 errors as any Go runtime wraps them.
        Go,
    }

    struct Case {
        origin: Origin,
        input: &'static str,
        want: Reason,
    }

    #[test]
    fn message_forms_from_the_sources() {
        use Origin::*;
        let cases = [
            Case {
                origin: Kubelet,
                input: "Container image \"registry.local/app:1\" is not present with pull policy of Never",
                want: Reason::NeverPull,
            },
            Case {
                origin: Kubelet,
                input: "Failed to apply default image tag \"Registry/App\": couldn't parse image reference \"Registry/App\": invalid reference format: repository name must be lowercase",
                want: Reason::InvalidReference,
            },
            Case {
                origin: Kubelet,
                input: "image pull failed for registry.local/app:1 because the registry is unavailable.",
                want: Reason::RegistryUnavailable,
            },
            Case {
                origin: Kubelet,
                input: "Failed to inspect image \"registry.local/app:1\": rpc error: code = Unavailable desc = connection error",
                want: Reason::RuntimeError,
            },
            Case {
                origin: Kubelet,
                input: "Failed to pull image \"registry.local/app:1\": rpc error: code = NotFound desc = failed to pull and unpack image \"registry.local/app:1\": failed to resolve reference \"registry.local/app:1\": registry.local/app:1: not found",
                want: Reason::ManifestUnknown,
            },
            Case {
                origin: Kubelet,
                input: "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
                want: Reason::PullTimeout,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://quay.io/org/app:9.9: reading manifest 9.9 in quay.io/org/app: manifest unknown",
                want: Reason::ManifestUnknown,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://registry.local/nope:1: reading manifest 1 in registry.local/nope: name unknown: repository name not known to registry",
                want: Reason::RepositoryUnknown,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://nope/nope:latest: reading manifest latest in docker.io/nope/nope: requested access to the resource is denied",
                want: Reason::Forbidden,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://registry.local/app:1: unable to retrieve auth token: invalid username/password: unauthorized: incorrect username or password",
                want: Reason::AuthFailed,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://quay.io/org/private:1: unable to retrieve auth token: invalid username/password: unauthorized: authentication required",
                want: Reason::AuthRequired,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://registry.local/app:1: reading manifest 1 in registry.local/app: unauthorized: authentication required",
                want: Reason::AuthRequired,
            },
            Case {
                origin: CriO,
                input: "initializing source docker://docker.io/library/nginx:1: reading manifest 1 in docker.io/library/nginx: toomanyrequests: You have reached your pull rate limit.",
                want: Reason::RateLimited,
            },
            Case {
                origin: CriO,
                input: "registry evil.example is blocked in /etc/containers/registries.conf or /etc/containers/registries.conf.d",
                want: Reason::Blocked,
            },
            Case {
                origin: CriO,
                input: "Source image rejected: A signature was required, but no signature exists",
                want: Reason::SignatureInvalid,
            },
            Case {
                origin: CriO,
                input: "choosing image instance: no image found in manifest list for architecture \"amd64\", variant \"\", OS \"linux\"",
                want: Reason::PlatformMismatch,
            },
            Case {
                origin: CriO,
                input: "short-name \"app\" did not resolve to an alias and no unqualified-search registries are defined in \"/etc/containers/registries.conf\"",
                want: Reason::InvalidReference,
            },
            Case {
                origin: CriO,
                input: "pinging container registry registry.local: received unexpected HTTP status: 503 Service Unavailable",
                want: Reason::RegistryUnavailable,
            },
            Case {
                origin: CriO,
                input: "pinging container registry registry.local: Get \"https://registry.local/v2/\": Proxy Authentication Required",
                want: Reason::ProxyError,
            },
            Case {
                origin: CriO,
                input: "writing blob: storing blob to file \"/var/tmp/storage123/1\": write /var/tmp/storage123/1: no space left on device",
                want: Reason::DiskFull,
            },
            Case {
                origin: ContainerdSource,
                input: "failed to pull and unpack image \"registry.local/app:1\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry.local/v2/app/blobs/sha256:0: 502 Bad Gateway",
                want: Reason::RegistryUnavailable,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": dial tcp: lookup registry.local: no answer from DNS server",
                want: Reason::DnsTimeout,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": dial tcp: lookup registry.local: Temporary failure in name resolution",
                want: Reason::DnsServfail,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": dial tcp 10.0.0.5:443: connect: connection timed out",
                want: Reason::TcpTimeout,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": dial tcp 10.0.0.5:443: connect: network is unreachable",
                want: Reason::TcpUnreachable,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": tls: failed to verify certificate: x509: certificate is valid for other.example, not registry.local",
                want: Reason::TlsHostnameMismatch,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": net/http: TLS handshake timeout",
                want: Reason::TlsHandshake,
            },
            Case {
                origin: Go,
                input: "Get \"https://registry.local/v2/\": net/http: request canceled while waiting for connection (Client.Timeout exceeded while awaiting headers)",
                want: Reason::RegistryUnavailable,
            },
            Case {
                origin: Go,
                input: "Head \"https://registry.local/v2/app/manifests/1\": proxyconnect tcp: dial tcp 10.0.0.9:3128: connect: connection refused",
                want: Reason::ProxyError,
            },
        ];
        let mut failures = Vec::new();
        for case in &cases {
            let got = classify_runtime_message(case.input);
            if got != case.want {
                failures.push(format!(
                    "{:?}: {got}, want {}: {}",
                    case.origin, case.want, case.input
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn messages_without_a_cause_stay_unknown() {
        for input in [
            "",
            // The kubelet's back-off message does not repeat the cause (the agent remembers the
            // ErrImagePull message instead).
            "Back-off pulling image \"registry.local/app:1\"",
            "something nobody has seen before",
            "open /var/lib/containerd/x: permission denied",
        ] {
            assert_eq!(classify_runtime_message(input), Reason::Unknown, "{input}");
        }
    }
}
