//! The one way pullwatch reads a file that outside input names (a flag, `KUBECONFIG`, a runtime
//! config file, a `ca` in hosts.toml): regular files only, opened without blocking, size-capped.
//!
//! A FIFO would block the open (or the read) for ever, `/dev/zero` never ends, and a huge file
//! costs its size in memory many times over once parsed: each is refused with an error naming
//! the path and what is wrong, after reading at most one byte more than the cap.

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// A kind of file and the most bytes one may have: generous, far above any real file of the
/// kind, so only a mistake or an attack reaches it (`docs/flags.md`, "Limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// What the file is, for errors: "docker config".
    pub what: &'static str,
    pub max_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

/// `--docker-config`, the kubelet's config.json: real ones hold a few registries (KiBs).
pub const DOCKER_CONFIG: Kind = Kind {
    what: "docker config",
    max_bytes: 4 * MIB,
};
/// `--ca-file`, hosts.toml's `ca` and `client`, a kubeconfig's certificate files: the largest
/// system bundles are about 250 KiB.
pub const PEM: Kind = Kind {
    what: "PEM file",
    max_bytes: 4 * MIB,
};
/// `--resolv-conf`: a few lines.
pub const RESOLV_CONF: Kind = Kind {
    what: "resolv.conf",
    max_bytes: MIB,
};
/// containerd's hosts.toml, CRI-O's registries.conf and each of its drop-ins.
/// /etc/hosts: Go reads it whole, whatever its size; blocklist files run to tens of MiB.
pub const HOSTS: Kind = Kind {
    what: "hosts file",
    max_bytes: 32 * MIB,
};

/// A one-line sysfs or procfs value (an interface index, the host name).
pub const SYS_VALUE: Kind = Kind {
    what: "system value",
    max_bytes: 4096,
};

pub const ROUTE_CONFIG: Kind = Kind {
    what: "runtime registry config",
    max_bytes: 4 * MIB,
};
/// Each file of `KUBECONFIG` (or `~/.kube/config`), certificates embedded.
pub const KUBECONFIG: Kind = Kind {
    what: "kubeconfig",
    max_bytes: 8 * MIB,
};
/// A bearer token file: a kubeconfig's `tokenFile`, the service account's token.
pub const TOKEN: Kind = Kind {
    what: "token file",
    max_bytes: 64 * 1024,
};
/// Each file of `--image-credential-provider-config`.
pub const PROVIDER_CONFIG: Kind = Kind {
    what: "credential provider config",
    max_bytes: MIB,
};

/// A file that cannot be read: its path and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub problem: FileProblem,
}

/// Why a file cannot be read; says nothing of its content.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("{} bytes, more than the {} a {} may have", size, shown_size(kind.max_bytes), kind.what)]
    TooLarge { size: u64, kind: Kind },
    /// The file said it was smaller (it grew, or it is a `/proc`-like file that tells no size).
    #[error("more than the {} a {} may have", shown_size(kind.max_bytes), kind.what)]
    GrewTooLarge { kind: Kind },
    #[error("not UTF-8 text")]
    NotUtf8,
}

impl FileError {
    /// The file does not exist (often no problem: a default path on a node without it).
    pub fn is_not_found(&self) -> bool {
        matches!(&self.problem, FileProblem::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The bytes of the regular file at `path` (symbolic links followed), at most `kind.max_bytes`.
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, FileError> {
    let fail = |problem: FileProblem| FileError {
        path: path.to_path_buf(),
        problem,
    };
    // A first look, so nothing but a regular file is even opened (opening a device can do things).
    let meta = std::fs::metadata(path).map_err(|e| fail(e.into()))?;
    regular(&meta).map_err(fail)?;
    read_opened(path, kind).map_err(fail)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, kind: Kind) -> Result<String, FileError> {
    let bytes = read(path, kind)?;
    String::from_utf8(bytes).map_err(|_| FileError {
        path: path.to_path_buf(),
        problem: FileProblem::NotUtf8,
    })
}

/// Opens without blocking (a FIFO swapped in after the first look opens at once, and is then
/// refused) and reads one byte past the cap at most, whatever size the file claims.
fn read_opened(path: &Path, kind: Kind) -> Result<Vec<u8>, FileProblem> {
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    regular(&meta)?;
    if meta.len() > kind.max_bytes {
        return Err(FileProblem::TooLarge {
            size: meta.len(),
            kind,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0) + 1);
    file.take(kind.max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > kind.max_bytes {
        return Err(FileProblem::GrewTooLarge { kind });
    }
    Ok(bytes)
}

fn regular(meta: &Metadata) -> Result<(), FileProblem> {
    match not_regular(meta.file_type()) {
        Some(what) => Err(FileProblem::NotRegular(what)),
        None => Ok(()),
    }
}

/// What a file is when it is not a regular file.
fn not_regular(file_type: FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        Some("a special file")
    }
}

/// `4 MiB`, `512 KiB`, or bytes.
fn shown_size(bytes: u64) -> String {
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const TINY: Kind = Kind {
        what: "test file",
        max_bytes: 16,
    };

    /// Runs `read` on another thread: a read that blocks fails the test instead of hanging it.
    fn read_bounded(path: &Path, kind: Kind) -> Result<Vec<u8>, FileError> {
        let (tx, rx) = mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read(&path, kind));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the read blocked for 10 s")
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
    }

    #[test]
    fn reads_a_regular_file_up_to_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ok");
        std::fs::write(&file, b"0123456789abcdef").unwrap();
        assert_eq!(read_bounded(&file, TINY).unwrap(), b"0123456789abcdef");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_to_string(&link, TINY).unwrap(), "0123456789abcdef");
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        struct Case {
            path: PathBuf,
            want: &'static str,
        }
        let cases = [
            Case {
                path: fifo.clone(),
                want: "is a FIFO (named pipe), not a regular file",
            },
            Case {
                path: "/dev/zero".into(),
                want: "is a character device, not a regular file",
            },
            Case {
                path: dir.path().to_path_buf(),
                want: "is a directory, not a regular file",
            },
            Case {
                path: socket,
                want: "is a socket, not a regular file",
            },
        ];
        for case in cases {
            let error = read_bounded(&case.path, DOCKER_CONFIG).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("{}: {}", case.path.display(), case.want)
            );
        }
        // A FIFO swapped in after the first look: the open itself does not wait for a writer.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_opened(&fifo, TINY));
        });
        let opened = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("opening a FIFO blocked for 10 s");
        assert!(matches!(
            opened,
            Err(FileProblem::NotRegular("a FIFO (named pipe)"))
        ));
    }

    #[test]
    fn refuses_a_file_over_its_cap_naming_size_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, [b'x'; 17]).unwrap();
        let error = read_bounded(&file, TINY).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: 17 bytes, more than the 16 bytes a test file may have",
                file.display()
            )
        );
        let big = Kind {
            what: "docker config",
            max_bytes: 4 * MIB,
        };
        std::fs::File::create(&file)
            .unwrap()
            .set_len(12 * MIB)
            .unwrap();
        let error = read_bounded(&file, big).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(": 12582912 bytes, more than the 4 MiB a docker config may have"),
            "{error}"
        );
    }

    #[test]
    fn a_file_longer_than_it_says_is_read_only_to_its_cap() {
        // /proc files say they are empty; this one holds far more than 16 bytes.
        let path = Path::new("/proc/self/status");
        assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
        let error = read_bounded(path, TINY).unwrap_err();
        assert!(
            matches!(error.problem, FileProblem::GrewTooLarge { .. }),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "/proc/self/status: more than the 16 bytes a test file may have"
        );
    }

    #[test]
    fn missing_files_and_bad_text_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read(&dir.path().join("none"), TINY).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let error = read_to_string(&binary, TINY).unwrap_err();
        assert!(!error.is_not_found());
        assert!(error.to_string().ends_with(": not UTF-8 text"), "{error}");
    }
}
