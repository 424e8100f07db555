//! Image platforms (`linux/amd64`, `linux/arm/v7`): parsing `--platform`, the node's default, and
//! which index entries a runtime on this platform would accept (containerd's normalisation and order).

use std::str::FromStr;

use serde::Deserialize;

/// An OS/architecture[/variant] triple, normalised as containerd does (`aarch64` → `arm64`, `arm` → `arm/v7`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A `--platform` value that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("platform {input:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7")]
pub struct PlatformError {
    pub input: String,
}

impl Platform {
    /// The platform of the machine pullwatch runs on, in OCI spelling.
    pub fn host() -> Self {
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: std::env::consts::ARCH.to_string(),
            variant: None,
        }
        .normalized()
    }

    /// containerd's `platforms.Normalize`: lower case, architecture aliases, default variants.
    pub fn normalized(&self) -> Self {
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_string(),
            other => other.to_string(),
        };
        let variant = self
            .variant
            .as_deref()
            .map(str::to_ascii_lowercase)
            .filter(|v| !v.is_empty());
        let (architecture, variant) = match self.architecture.to_ascii_lowercase().as_str() {
            "i386" | "x86" => ("386".to_string(), None),
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_string(), variant.filter(|v| v != "v1")),
            "aarch64" | "arm64" => (
                "arm64".to_string(),
                variant.filter(|v| !matches!(v.as_str(), "8" | "v8" | "v8.0")),
            ),
            "armhf" => ("arm".to_string(), Some("v7".to_string())),
            "armel" => ("arm".to_string(), Some("v6".to_string())),
            "arm" => {
                let variant = match variant.as_deref() {
                    None | Some("7") => "v7".to_string(),
                    Some(v @ ("5" | "6" | "8")) => format!("v{v}"),
                    Some(other) => other.to_string(),
                };
                ("arm".to_string(), Some(variant))
            }
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le".to_string(), variant),
            "loongarch64" => ("loong64".to_string(), variant),
            other => (other.to_string(), variant),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// Every platform a runtime on `self` accepts, best first (containerd's `platforms.Only`):
    /// amd64 also runs 386, arm64 also runs arm/v8…v5, arm/v7 also runs v6 and v5.
    pub fn accepted(&self) -> Vec<Platform> {
        let me = self.normalized();
        let with = |architecture: &str, variant: Option<String>| Platform {
            os: me.os.clone(),
            architecture: architecture.to_string(),
            variant,
        };
        let level = |variant: &Option<String>| {
            variant
                .as_deref()
                .and_then(|v| v.strip_prefix('v'))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let arm_down = |from: u32| (5..=from).rev().map(|v| with("arm", Some(format!("v{v}"))));
        let mut accepted = vec![me.clone()];
        match me.architecture.as_str() {
            "amd64" => {
                if let Some(from) = level(&me.variant).filter(|l| *l > 1) {
                    accepted.extend(
                        (2..from)
                            .rev()
                            .map(|v| with("amd64", Some(format!("v{v}")))),
                    );
                    accepted.push(with("amd64", None));
                }
                accepted.push(with("386", None));
            }
            "arm64" => accepted.extend(arm_down(8)),
            "arm" => {
                if let Some(from) = level(&me.variant) {
                    accepted.extend(arm_down(from).skip(1));
                }
            }
            _ => {}
        }
        accepted
    }

    /// Whether a runtime on `self` would pick an index entry for `candidate`.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        let candidate = candidate.normalized();
        self.accepted().contains(&candidate)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = || PlatformError {
            input: input.to_string(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(fail());
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        }
        .normalized())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_and_normalises() {
        struct Case {
            input: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                input: "linux/amd64",
                want: Some("linux/amd64"),
            },
            Case {
                input: "linux/x86_64",
                want: Some("linux/amd64"),
            },
            Case {
                input: "Linux/AMD64/v1",
                want: Some("linux/amd64"),
            },
            Case {
                input: "linux/amd64/v3",
                want: Some("linux/amd64/v3"),
            },
            Case {
                input: "linux/aarch64",
                want: Some("linux/arm64"),
            },
            Case {
                input: "linux/arm64/v8",
                want: Some("linux/arm64"),
            },
            Case {
                input: "linux/arm",
                want: Some("linux/arm/v7"),
            },
            Case {
                input: "linux/armhf",
                want: Some("linux/arm/v7"),
            },
            Case {
                input: "linux/arm/6",
                want: Some("linux/arm/v6"),
            },
            Case {
                input: "windows/amd64",
                want: Some("windows/amd64"),
            },
            Case {
                input: "linux",
                want: None,
            },
            Case {
                input: "linux/",
                want: None,
            },
            Case {
                input: "/amd64",
                want: None,
            },
            Case {
                input: "linux/arm/v7/extra",
                want: None,
            },
            Case {
                input: "linux/am d64",
                want: None,
            },
            Case {
                input: "",
                want: None,
            },
        ];
        for case in cases {
            let got = case.input.parse::<Platform>().ok().map(|p| p.to_string());
            assert_eq!(got.as_deref(), case.want, "input {:?}", case.input);
        }
        let error = "linux".parse::<Platform>().unwrap_err().to_string();
        assert!(
            error.contains("\"linux\"") && error.contains("os/arch"),
            "{error}"
        );
    }

    #[test]
    fn host_is_a_normalised_platform() {
        let host = Platform::host();
        assert_eq!(host, host.normalized());
        assert!(!host.os.is_empty() && !host.architecture.is_empty());
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(host.to_string(), "linux/amd64");
        }
    }

    #[test]
    fn accepts_what_containerd_would_pick() {
        struct Case {
            node: &'static str,
            candidate: &'static str,
            want: bool,
        }
        let cases = [
            Case {
                node: "linux/amd64",
                candidate: "linux/amd64",
                want: true,
            },
            Case {
                node: "linux/amd64",
                candidate: "linux/x86_64",
                want: true,
            },
            Case {
                node: "linux/amd64",
                candidate: "linux/386",
                want: true,
            },
            Case {
                node: "linux/amd64",
                candidate: "linux/arm64",
                want: false,
            },
            Case {
                node: "linux/amd64",
                candidate: "windows/amd64",
                want: false,
            },
            Case {
                node: "linux/amd64",
                candidate: "linux/amd64/v3",
                want: false,
            },
            Case {
                node: "linux/amd64/v3",
                candidate: "linux/amd64/v2",
                want: true,
            },
            Case {
                node: "linux/amd64/v3",
                candidate: "linux/amd64",
                want: true,
            },
            Case {
                node: "linux/arm64",
                candidate: "linux/arm64/v8",
                want: true,
            },
            Case {
                node: "linux/arm64",
                candidate: "linux/arm/v7",
                want: true,
            },
            Case {
                node: "linux/arm64",
                candidate: "linux/amd64",
                want: false,
            },
            Case {
                node: "linux/arm/v7",
                candidate: "linux/arm/v6",
                want: true,
            },
            Case {
                node: "linux/arm/v6",
                candidate: "linux/arm/v7",
                want: false,
            },
            Case {
                node: "linux/s390x",
                candidate: "linux/s390x",
                want: true,
            },
            Case {
                node: "linux/s390x",
                candidate: "unknown/unknown",
                want: false,
            },
        ];
        for case in cases {
            assert_eq!(
                p(case.node).accepts(&p(case.candidate)),
                case.want,
                "{} runs {}?",
                case.node,
                case.candidate
            );
        }
    }
}
