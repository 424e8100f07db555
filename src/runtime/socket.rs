//! Where the CRI socket is: crictl's `unix:///…` endpoint form, or the first well-known socket
//! that exists (no runtime is a warning, not an error).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// A `--runtime-endpoint` value that is not a unix socket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--runtime-endpoint {value:?}: {problem}")]
pub struct EndpointError {
    pub value: String,
    pub problem: &'static str,
}

/// Parses crictl's endpoint form: `unix:///run/containerd/containerd.sock` (a bare absolute path
/// is accepted too, as crictl does).
pub fn parse_endpoint(value: &str) -> Result<PathBuf, EndpointError> {
    let fail = |problem| EndpointError {
        value: value.to_string(),
        problem,
    };
    let path = match value.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => return Err(fail("only unix:// sockets are supported")),
        None => value,
    };
    if !path.starts_with('/') {
        return Err(fail("expected unix:///absolute/path.sock"));
    }
    Ok(PathBuf::from(path))
}

/// Where the runtime's socket is and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub socket: PathBuf,
    /// Found by probing the well-known paths rather than named by `--runtime-endpoint`.
    pub auto_detected: bool,
}

/// The socket named by `--runtime-endpoint`, else the first of `candidates` that exists as a
/// socket; `None` when there is none (no runtime: a warning, not an error).
pub fn locate(flag: Option<&str>, candidates: &[&str]) -> Result<Option<Located>, EndpointError> {
    if let Some(value) = flag {
        return Ok(Some(Located {
            socket: parse_endpoint(value)?,
            auto_detected: false,
        }));
    }
    Ok(candidates
        .iter()
        .map(Path::new)
        .find(|path| {
            std::fs::metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
        })
        .map(|path| Located {
            socket: path.to_path_buf(),
            auto_detected: true,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        struct Case {
            input: &'static str,
            want: Result<&'static str, &'static str>,
        }
        let cases = [
            Case {
                input: "unix:///run/containerd/containerd.sock",
                want: Ok("/run/containerd/containerd.sock"),
            },
            Case {
                input: "/var/run/crio/crio.sock",
                want: Ok("/var/run/crio/crio.sock"),
            },
            Case {
                input: "tcp://10.0.0.1:1234",
                want: Err("only unix:// sockets are supported"),
            },
            Case {
                input: "unix://relative.sock",
                want: Err("expected unix:///absolute/path.sock"),
            },
            Case {
                input: "containerd.sock",
                want: Err("expected unix:///absolute/path.sock"),
            },
        ];
        for case in cases {
            let got = parse_endpoint(case.input);
            match case.want {
                Ok(path) => assert_eq!(got, Ok(PathBuf::from(path)), "{}", case.input),
                Err(problem) => {
                    let error = got.expect_err(case.input);
                    assert_eq!(error.problem, problem, "{}", case.input);
                    assert!(error.to_string().contains(case.input));
                }
            }
        }
    }

    #[test]
    fn auto_detect_takes_the_first_existing_socket_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_socket = dir.path().join("file.sock");
        std::fs::write(&not_a_socket, "").unwrap();
        let socket = dir.path().join("crio.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let later = dir.path().join("later.sock");
        let _later = std::os::unix::net::UnixListener::bind(&later).unwrap();
        let missing = dir.path().join("containerd.sock");
        let candidates = [
            missing.to_str().unwrap(),
            not_a_socket.to_str().unwrap(),
            socket.to_str().unwrap(),
            later.to_str().unwrap(),
        ];
        assert_eq!(
            locate(None, &candidates).unwrap(),
            Some(Located {
                socket: socket.clone(),
                auto_detected: true
            })
        );
        assert_eq!(locate(None, &candidates[..2]).unwrap(), None);
        let flagged = locate(Some("unix:///x/y.sock"), &candidates)
            .unwrap()
            .unwrap();
        assert_eq!(flagged.socket, PathBuf::from("/x/y.sock"));
        assert!(!flagged.auto_detected);
    }
}
