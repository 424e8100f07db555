//! Notices when the runtime's registry config changes (a new `hosts.toml`, an edited
//! `registries.conf` or drop-in) so discovery runs at once rather than at the next `--interval`.
//! A poll of sizes and modification times, not inotify: ConfigMap and hostPath updates swap
//! symlinks, which a `stat` follows and a watch on the old inode misses.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// Directory entries looked at per directory, at most (a larger one is fingerprinted in part).
const MAX_ENTRIES: usize = 512;

/// The files whose state decides the routes.
#[derive(Clone, Debug)]
pub struct ConfigFiles {
    /// containerd's `config_path`: `<registry>/hosts.toml`.
    pub certs_dir: PathBuf,
    /// CRI-O's `registries.conf`; its drop-ins are in `<file>.d/`.
    pub registries_conf: PathBuf,
}

impl ConfigFiles {
    /// A summary of what a `stat` sees of every file; equal values mean nothing visible changed.
    /// Blocking: a few hundred `stat` calls at most.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        stat(&self.certs_dir, &mut hasher);
        for entry in entries(&self.certs_dir) {
            stat(&entry, &mut hasher);
            stat(&entry.join("hosts.toml"), &mut hasher);
        }
        stat(&self.registries_conf, &mut hasher);
        let drop_ins = PathBuf::from(format!("{}.d", self.registries_conf.display()));
        stat(&drop_ins, &mut hasher);
        for entry in entries(&drop_ins) {
            stat(&entry, &mut hasher);
        }
        hasher.finish()
    }
}

/// A directory's entries in name order, capped; none when it cannot be read.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = read
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .take(MAX_ENTRIES * 4)
        .collect();
    paths.sort();
    paths.truncate(MAX_ENTRIES);
    paths
}

/// Feeds a path's size and modification time (following symlinks), or why it has none.
fn stat(path: &Path, hasher: &mut DefaultHasher) {
    path.hash(hasher);
    match std::fs::metadata(path) {
        Ok(meta) => {
            meta.len().hash(hasher);
            meta.modified().ok().hash(hasher);
        }
        Err(error) => error.kind().hash(hasher),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_to_any_config_file_change_the_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ConfigFiles {
            certs_dir: dir.path().join("certs.d"),
            registries_conf: dir.path().join("registries.conf"),
        };
        let mut last = files.fingerprint();
        assert_eq!(last, files.fingerprint(), "stable while nothing changes");
        let mut changed = |what: &str, edit: &dyn Fn()| {
            edit();
            let now = files.fingerprint();
            assert_ne!(now, last, "{what}");
            last = now;
        };
        let hosts = files.certs_dir.join("registry.test:5000/hosts.toml");
        changed("certs.d created", &|| {
            std::fs::create_dir_all(hosts.parent().unwrap()).unwrap()
        });
        changed("hosts.toml added", &|| {
            std::fs::write(&hosts, "server = \"https://registry.test:5000\"\n").unwrap()
        });
        changed("hosts.toml edited", &|| {
            std::fs::write(&hosts, "server = \"https://mirror.test\"\n").unwrap()
        });
        changed("registries.conf added", &|| {
            std::fs::write(&files.registries_conf, "").unwrap()
        });
        let drop_ins = dir.path().join("registries.conf.d");
        changed("drop-in dir added", &|| {
            std::fs::create_dir(&drop_ins).unwrap()
        });
        changed("drop-in added", &|| {
            std::fs::write(drop_ins.join("10-mirror.conf"), "[[registry]]\n").unwrap()
        });
        changed("registry dir removed", &|| {
            std::fs::remove_dir_all(hosts.parent().unwrap()).unwrap()
        });
    }
}
