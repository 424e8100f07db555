//! The API socket's file: bound in a private directory, made owner-only there and only then renamed
//! into place, so it never exists at its path with the umask's looser mode, even for a moment.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Attempts at a fresh private directory name before giving up.
const PRIVATE_DIR_ATTEMPTS: usize = 8;

/// Why the API socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("--api-socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("--api-socket {path}: another process is serving it")]
    InUse { path: String },
    #[error("--api-socket {path}: exists and is not a socket")]
    NotASocket { path: String },
}

/// Binds the API socket: creates its directory, replaces a stale socket (never another file, never
/// a live one), and publishes it owner-only from its first moment, since `Diagnose` probes what
/// the caller names.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let io = |source| SocketError::Io {
        path: shown.clone(),
        source,
    };
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: shown });
            }
            // Stale: the rename below replaces it.
        }
        Ok(_) => return Err(SocketError::NotASocket { path: shown }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "names a directory, not a socket file",
        ))
    })?;
    let private = PrivateDir::create(dir, &name.to_string_lossy()).map_err(io)?;
    let staged = private.0.join(name);
    let listener = UnixListener::bind(&staged).map_err(io)?;
    // Nobody else can reach it yet: the directory is 0700.
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)?;
    Ok(listener)
}

/// A directory only its owner can enter, removed with what is left in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    /// `.<name>.<pid>.<random>` in `parent` (the same filesystem, so a rename out of it is atomic).
    fn create(parent: &Path, name: &str) -> std::io::Result<Self> {
        let mut last = None;
        for _ in 0..PRIVATE_DIR_ATTEMPTS {
            let candidate = parent.join(format!(
                ".{name}.{}.{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => return Ok(PrivateDir(candidate)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free private directory name")))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // Best effort: a socket left behind by a failed rename goes too.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_never_replaced_and_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/pw.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(listener);
        let listener = bind(&path).unwrap();
        // The socket works where it was published, and no private directory is left behind.
        std::os::unix::net::UnixStream::connect(&path).expect("connect to the published socket");
        drop(listener);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("pw.sock")]);
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind(&file), Err(SocketError::NotASocket { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_socket_is_owner_only_from_its_first_moment() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            move || {
                let mut modes = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path)
                        && meta.file_type().is_socket()
                    {
                        modes.insert(meta.permissions().mode() & 0o777);
                    }
                }
                modes
            }
        });
        for _ in 0..2000 {
            drop(bind(&path).unwrap());
            std::fs::remove_file(&path).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let modes = watcher.join().unwrap();
        assert!(!modes.is_empty(), "the watcher never saw the socket");
        assert!(
            modes.iter().all(|m| *m == 0o600),
            "modes seen: {modes:?} (0o600 is 384)"
        );
    }
}
