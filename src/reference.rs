//! Image references, normalised the way the runtime does (`nginx` → `docker.io/library/nginx:latest`).
//! The grammar is distribution's, checked by hand (oci-spec's regex costs megabytes of matcher
//! cache per thread); this module adds the errors a person can act on.

mod grammar;

use oci_spec::distribution::{ParseError, Reference};

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef(Reference);

/// Why an image name cannot be parsed; the message names the input and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {problem}")]
pub struct ReferenceError {
    pub input: String,
    pub problem: String,
}

impl ImageRef {
    /// Parses and normalises `input`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |problem: String| ReferenceError {
            input: input.to_string(),
            problem,
        };
        if let Some(problem) = obvious_problem(input) {
            return Err(fail(problem.to_string()));
        }
        if is_image_id(input) {
            return Err(fail(
                "a 64-character hex string is an image ID, not a repository name".into(),
            ));
        }
        let (domain, remainder) = split_domain(input);
        if !valid_domain(&domain) {
            return Err(fail(format!(
                "{domain:?} is not a registry host[:port] (letters, digits, '-' and '.', or an IPv6 address in brackets)"
            )));
        }
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(fail("repository name must be lowercase".into()));
        }
        // The path, tag and digest grammar (distribution/reference's regexp.go), by hand: the
        // registry is the one the kubelet's grammar (above) found.
        let parsed = grammar::parse(&remainder).map_err(|e| fail(explain(input, &e)))?;
        // distribution/reference's ErrNameTooLong counts the normalised name, registry included.
        let name_length = domain.len() + 1 + parsed.repository.len();
        if name_length > NAME_TOTAL_LENGTH_MAX {
            return Err(fail(format!(
                "the name (registry and repository) has {name_length} characters, more than {NAME_TOTAL_LENGTH_MAX}"
            )));
        }
        if let Some(problem) = parsed.digest.and_then(digest_problem) {
            return Err(fail(problem));
        }
        let repository = parsed.repository.to_string();
        let reference = match (parsed.tag, parsed.digest) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(domain, repository, tag.into(), digest.into())
            }
            (None, Some(digest)) => Reference::with_digest(domain, repository, digest.into()),
            (tag, None) => {
                Reference::with_tag(domain, repository, tag.unwrap_or("latest").to_string())
            }
        };
        Ok(ImageRef(reference))
    }

    /// The registry host, with port when given (`docker.io`, `ghcr.io`, `10.0.0.5:5000`).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository path within the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// What goes after `/manifests/`: the digest when pinned (the runtime pulls by digest then), else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest().or(self.tag()).unwrap_or("latest")
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// distribution/reference's `NameTotalLengthMax`.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// go-digest's check, stricter than the reference grammar: the encoded part of a sha256, sha384
/// or sha512 digest is lower-case hex (`[a-f0-9]`); upper case is "invalid checksum digest format".
fn digest_problem(digest: &str) -> Option<String> {
    let (algorithm, encoded) = digest.split_once(':')?;
    let lower_hex = encoded
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (!lower_hex).then(|| {
        format!("invalid checksum digest format: a {algorithm} digest is lower-case hex (0-9, a-f)")
    })
}

/// A bare image ID (64 lowercase hex characters): the kubelet's grammar refuses it as a name.
fn is_image_id(input: &str) -> bool {
    input.len() == 64
        && input
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The registry and the rest, as the kubelet's grammar (distribution/reference v0.5+,
/// normalize.go `splitDockerDomain`) splits them: the first component is a registry when it is
/// `localhost`, holds a `.` or `:` (a host name, an IP, `host:port`, `[::1]:5000`) or has an
/// upper-case letter (namespaces are lower case); else the name is Docker Hub's, `library/`
/// prefixed when it has one component. `index.docker.io` is Docker Hub.
fn split_domain(input: &str) -> (String, String) {
    const HUB: &str = "docker.io";
    let (domain, remainder) = match input.split_once('/') {
        None => (HUB.to_string(), input.to_string()),
        Some(("index.docker.io", rest)) => (HUB.to_string(), rest.to_string()),
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        Some(_) => (HUB.to_string(), input.to_string()),
    };
    let path = remainder.split(['@', ':']).next().unwrap_or_default();
    if domain == HUB && !path.contains('/') {
        return (domain, format!("library/{remainder}"));
    }
    (domain, remainder)
}

/// distribution/reference's domain grammar: host name components of letters, digits and inner
/// `-`, joined by `.`, or an IPv6 address in brackets; then an optional `:port` of digits.
pub(crate) fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
        _ => (domain, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        None => host.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes.first() != Some(&b'-')
                && bytes.last() != Some(&b'-')
        }),
    };
    port_ok && host_ok
}

/// Problems the grammar would only call "invalid reference format", said more usefully.
fn obvious_problem(input: &str) -> Option<&'static str> {
    if input.is_empty() {
        Some("the image name is empty")
    } else if input.contains("://") {
        Some("an image name has no scheme: drop the http:// or https:// prefix")
    } else if input.chars().any(char::is_whitespace) {
        Some("the image name contains whitespace")
    } else if input.ends_with(':') || input.ends_with('@') || input.ends_with('/') {
        Some("the image name ends with a separator and nothing after it")
    } else {
        None
    }
}

fn explain(input: &str, error: &ParseError) -> String {
    match error {
        ParseError::ReferenceInvalidFormat
            if repository_part(input)
                .chars()
                .any(|c| c.is_ascii_uppercase()) =>
        {
            "repository name must be lowercase".to_string()
        }
        ParseError::ReferenceInvalidFormat => format!(
            "{error} (expected [registry[:port]/]repository[:tag][@sha256:digest], lowercase, tag up to 128 characters of [A-Za-z0-9_.-])"
        ),
        other => other.to_string(),
    }
}

/// The repository path of a raw input: no registry host, no tag, no digest.
fn repository_part(input: &str) -> &str {
    let name = input.split('@').next().unwrap_or(input);
    let path = match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => name,
    };
    match path.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        input: &'static str,
        want: &'static str,
        registry: &'static str,
    }

    #[test]
    fn normalises_like_the_runtime() {
        let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let cases = [
            Case {
                input: "nginx",
                want: "docker.io/library/nginx:latest",
                registry: "docker.io",
            },
            Case {
                input: "nginx:1.27",
                want: "docker.io/library/nginx:1.27",
                registry: "docker.io",
            },
            Case {
                input: "bitnami/redis",
                want: "docker.io/bitnami/redis:latest",
                registry: "docker.io",
            },
            Case {
                input: "docker.io/nginx",
                want: "docker.io/library/nginx:latest",
                registry: "docker.io",
            },
            Case {
                input: "index.docker.io/library/nginx",
                want: "docker.io/library/nginx:latest",
                registry: "docker.io",
            },
            Case {
                input: "ghcr.io/org/app:1.2",
                want: "ghcr.io/org/app:1.2",
                registry: "ghcr.io",
            },
            Case {
                input: "localhost:5000/x",
                want: "localhost:5000/x:latest",
                registry: "localhost:5000",
            },
            Case {
                input: "localhost/x",
                want: "localhost/x:latest",
                registry: "localhost",
            },
            Case {
                input: "10.0.0.5:5000/team/app:v1",
                want: "10.0.0.5:5000/team/app:v1",
                registry: "10.0.0.5:5000",
            },
            Case {
                input: "quay.io/a/b/c:tag_1.0-rc",
                want: "quay.io/a/b/c:tag_1.0-rc",
                registry: "quay.io",
            },
        ];
        for case in cases {
            let got = ImageRef::parse(case.input).unwrap_or_else(|e| panic!("{}: {e}", case.input));
            assert_eq!(got.to_string(), case.want, "input {}", case.input);
            assert_eq!(got.registry(), case.registry, "input {}", case.input);
        }
        let pinned = ImageRef::parse(&format!("repo@{digest}")).unwrap();
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/repo@{digest}")
        );
        assert_eq!(pinned.manifest_reference(), digest);
        let both = ImageRef::parse(&format!("repo:1.0@{digest}")).unwrap();
        assert_eq!(
            both.manifest_reference(),
            digest,
            "the digest wins, as in the runtime"
        );
    }

    #[test]
    fn rejects_with_a_useful_message() {
        let cases = [
            ("", "empty"),
            ("Nginx", "lowercase"),
            ("ghcr.io/Org/app", "lowercase"),
            ("https://ghcr.io/org/app", "scheme"),
            ("nginx:", "separator"),
            ("ngi nx", "whitespace"),
            ("nginx:bad!tag", "invalid reference format"),
            ("repo@sha256:abc", "digest"),
            ("repo@md5:0123456789abcdef0123456789abcdef", "digest"),
            (
                "repo@sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
                "invalid checksum digest format: a sha256 digest is lower-case hex",
            ),
            (
                "repo:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF",
                "lower-case hex",
            ),
        ];
        for (input, want) in cases {
            let err = ImageRef::parse(input).expect_err(input);
            let text = err.to_string();
            assert!(text.contains(want), "{input:?}: {text}");
            assert!(
                text.contains(&format!("{input:?}")),
                "names the input: {text}"
            );
        }
    }
}

#[cfg(test)]
mod name_length {
    use super::*;

    /// normalize.go/reference.go: the normalised name, registry included, is at most 255 characters.
    #[test]
    fn counts_the_registry_like_distribution_reference() {
        let host = format!("{}test", "a.".repeat(148));
        assert_eq!(host.len(), 300);
        let error = ImageRef::parse(&format!("{host}/app:1.0")).unwrap_err();
        assert!(
            error.problem.contains("has 304 characters, more than 255"),
            "{error}"
        );
        // docker.io/library/ counts too.
        let long = "a".repeat(255 - "docker.io/library/".len());
        assert!(ImageRef::parse(&long).is_ok());
        assert!(ImageRef::parse(&format!("{long}b")).is_err());
    }
}

#[cfg(test)]
mod kubelet_grammar {
    //! Rows from distribution/reference v0.5+ (normalize.go `splitDockerDomain`,
    //! `ParseNormalizedNamed`; regexp.go's domain grammar), the grammar the kubelet parses with.
    use super::*;

    struct Case {
        input: &'static str,
        /// `Ok((registry, repository))`, or `Err(a fragment of the problem)`.
        want: Result<(&'static str, &'static str), &'static str>,
        source: &'static str,
    }

    #[test]
    fn names_split_and_refused_like_distribution_reference() {
        let cases = [
            Case {
                input: "[::1]:5000/app",
                want: Ok(("[::1]:5000", "app")),
                source: "regexp.go: ipv6address in brackets, v0.5",
            },
            Case {
                input: "[2001:db8::1]/team/app:1.0",
                want: Ok(("[2001:db8::1]", "team/app")),
                source: "regexp.go: ipv6address without a port",
            },
            Case {
                input: "Foo/bar",
                want: Ok(("Foo", "bar")),
                source: "normalize.go: an upper-case first component is a domain, v0.5",
            },
            Case {
                input: "foo/bar",
                want: Ok(("docker.io", "foo/bar")),
                source: "normalize.go: a lower-case namespace on Docker Hub",
            },
            Case {
                input: "Foo",
                want: Err("must be lowercase"),
                source: "normalize.go: docker.io/library/Foo is not lower case",
            },
            Case {
                input: "localhost/app",
                want: Ok(("localhost", "app")),
                source: "normalize.go: localhost is always a domain",
            },
            Case {
                input: "index.docker.io/nginx",
                want: Ok(("docker.io", "library/nginx")),
                source: "normalize.go: the legacy Docker Index is Docker Hub",
            },
            Case {
                input: "registry.example:5000/Team/app",
                want: Err("must be lowercase"),
                source: "normalize.go: the remote name must be lower case",
            },
            Case {
                input: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                want: Err("image ID"),
                source: "normalize.go: 64-byte hexadecimal strings are refused",
            },
            Case {
                input: "docker.io/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                want: Ok((
                    "docker.io",
                    "library/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                )),
                source: "normalize.go: only the whole name is checked for an image ID",
            },
            Case {
                input: "my_reg.io/app",
                want: Err("not a registry host"),
                source: "regexp.go: domain components have no '_'",
            },
            Case {
                input: "[fe80::1%eth0]:5000/app",
                want: Err("not a registry host"),
                source: "regexp.go: no zone in a bracketed address",
            },
            Case {
                input: "registry.example:port/app",
                want: Err("not a registry host"),
                source: "regexp.go: a port is digits",
            },
        ];
        for case in cases {
            let got = ImageRef::parse(case.input)
                .map(|r| (r.registry().to_string(), r.repository().to_string()));
            match (got, case.want) {
                (Ok(got), Ok((registry, repository))) => assert_eq!(
                    got,
                    (registry.to_string(), repository.to_string()),
                    "{} ({})",
                    case.input,
                    case.source
                ),
                (Err(error), Err(fragment)) => assert!(
                    error.problem.contains(fragment),
                    "{}: {} ({})",
                    case.input,
                    error.problem,
                    case.source
                ),
                (got, want) => panic!(
                    "{}: got {got:?}, want {want:?} ({})",
                    case.input, case.source
                ),
            }
        }
    }
}
