//! registries.conf parsed once per change of its files: every route lookup used to read and parse
//! the whole config again, so a config with thousands of tables cost thousands of parses a round.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{MAX_DROP_INS, RegistriesConf, drop_in_dir, load};

/// What a `stat` shows of one file: equal stamps, same content (as far as a poll can tell).
type FileStamp = (PathBuf, Option<(u64, Option<SystemTime>)>);

/// The last parse of registries.conf and the stamp of the files it came from.
#[derive(Debug, Default)]
pub struct Cache {
    last: Mutex<Option<(Vec<FileStamp>, Arc<RegistriesConf>)>>,
}

impl Cache {
    /// [`load`] of `conf`, parsed again only when a file's size or modification time changed (or
    /// a drop-in came or went). Blocking: a `stat` per file.
    pub fn load(&self, conf: &Path) -> Arc<RegistriesConf> {
        let now = stamp(conf);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, parsed)) = last.as_ref()
            && *seen == now
        {
            return Arc::clone(parsed);
        }
        let parsed = Arc::new(load(conf));
        *last = Some((now, Arc::clone(&parsed)));
        parsed
    }
}

/// The stamps of `conf`, its drop-in directory and the drop-ins [`load`] would read.
fn stamp(conf: &Path) -> Vec<FileStamp> {
    let of = |path: PathBuf| {
        let meta = std::fs::metadata(&path).ok();
        let stamp = meta.map(|m| (m.len(), m.modified().ok()));
        (path, stamp)
    };
    let dir = drop_in_dir(conf);
    let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect()
        })
        .unwrap_or_default();
    drop_ins.sort();
    // One more than is read: a file beyond the cap changes the problem reported.
    let count = drop_ins.len();
    drop_ins.truncate(MAX_DROP_INS + 1);
    let mut stamps = vec![of(conf.to_path_buf()), of(dir)];
    stamps.push((PathBuf::new(), Some((count as u64, None))));
    stamps.extend(drop_ins.into_iter().map(of));
    stamps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_again_only_when_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(&conf, "[[registry]]\nlocation = \"a.example\"\n").unwrap();
        let cache = Cache::default();
        let first = cache.load(&conf);
        assert!(Arc::ptr_eq(&first, &cache.load(&conf)), "not parsed again");
        // A drop-in appears: parsed again, with it.
        let drop_ins = dir.path().join("registries.conf.d");
        std::fs::create_dir(&drop_ins).unwrap();
        std::fs::write(
            drop_ins.join("b.conf"),
            "[[registry]]\nlocation = \"b.example\"\n",
        )
        .unwrap();
        let second = cache.load(&conf);
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.registries.len(), 2);
        // The file grows: parsed again.
        std::fs::write(
            &conf,
            "[[registry]]\nlocation = \"a.example\"\n[[registry]]\nlocation = \"c.example\"\n",
        )
        .unwrap();
        assert_eq!(cache.load(&conf).registries.len(), 3);
    }
}
