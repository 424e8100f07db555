//! A file the resolver reads again when it changes, as Go's resolver treats resolv.conf and
//! `/etc/hosts`: looked at (one `stat`) at most every 5 seconds, read again only when its
//! modification time or size changed; a reading that fails keeps the last good value.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a reading is trusted before the file is looked at again (Go's `cacheMaxAge` for
/// hosts, and the interval of `resolverConfig.tryUpdate` for resolv.conf).
pub const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// A file's value, kept until the file changes.
pub struct Reread<T> {
    path: PathBuf,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    /// When the file was last looked at; `None` before the first look.
    looked: Option<Instant>,
    stamp: Option<(SystemTime, u64)>,
}

impl<T> Reread<T> {
    /// `value`, just read from `path`: trusted as the file's for the next interval.
    pub fn read_now(path: impl Into<PathBuf>, value: T) -> Self {
        let path = path.into();
        let stamp = stamp(&path);
        Self::with(path, value, Some(Instant::now()), stamp)
    }

    /// Not read yet: `value` stands in until the first look reads the file (if it exists).
    pub fn unread(path: impl Into<PathBuf>, value: T) -> Self {
        Self::with(path.into(), value, None, None)
    }

    fn with(
        path: PathBuf,
        value: T,
        looked: Option<Instant>,
        stamp: Option<(SystemTime, u64)>,
    ) -> Self {
        Reread {
            path,
            state: Mutex::new(State {
                value: Arc::new(value),
                looked,
                stamp,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value now: `read` again when the file changed since it was last looked at; when
    /// `read` fails, its error goes to `failed` and the last value stays (until the next change).
    pub fn get<E>(
        &self,
        read: impl FnOnce(&Path) -> Result<T, E>,
        failed: impl FnOnce(E),
    ) -> Arc<T> {
        // A panic while it was held leaves a state that is still whole: use it.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .looked
            .is_none_or(|at| at.elapsed() >= LOOK_AGAIN_AFTER)
        {
            state.looked = Some(Instant::now());
            let now = stamp(&self.path);
            if now != state.stamp {
                state.stamp = now;
                match read(&self.path) {
                    Ok(value) => state.value = Arc::new(value),
                    Err(error) => failed(error),
                }
            }
        }
        state.value.clone()
    }
}

/// A file's modification time and size: what tells a changed file.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}
