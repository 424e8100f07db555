//! Image references, normalised the way the runtime does (`nginx` → `docker.io/library/nginx:latest`).
//! Parsing is `oci-spec`'s (a port of distribution's grammar); this module adds the errors a person can act on.

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
        Reference::try_from(input)
            .map(ImageRef)
            .map_err(|e| fail(explain(input, &e)))
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
