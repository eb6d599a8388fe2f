//! Keeping a parsed file (the policy, the system info) between calls of the
//! daemon: a value is reused only while every file it came from has the
//! same inode, size, modification and change time, so an edit takes effect
//! on the next call.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What identifies one version of a file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    path: PathBuf,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn changed_before(&self, t: SystemTime) -> bool {
        let Ok(d) = t.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let t = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
        self.mtime < t && self.ctime < t
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        path: path.to_owned(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Stamps of `roots` and everything below them (directories included, so
/// an added or removed file changes the key), at most `depth` levels deep.
/// A missing root is a stamp of its own (`None`), so creating it counts.
pub fn stamps(roots: &[PathBuf], depth: usize) -> Vec<Option<Stamp>> {
    let mut out = Vec::new();
    for root in roots {
        walk(root, depth, &mut out);
    }
    out
}

fn walk(path: &Path, depth: usize, out: &mut Vec<Option<Stamp>>) {
    let s = stamp(path);
    let is_dir = path.is_dir();
    out.push(s);
    if !is_dir || depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        walk(&p, depth - 1, out);
    }
}

/// The stamps of everything a value was loaded from.
pub type Key = Vec<Option<Stamp>>;

/// One cached value and the stamps it was loaded under.
pub struct Cached<T> {
    slot: Mutex<Option<(Key, Arc<T>)>>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached { slot: Mutex::new(None) }
    }
}

/// Files changed this close to a load are not trusted to show a later
/// change in their timestamps (filesystem clocks are coarse).
const SETTLE: Duration = Duration::from_millis(100);

impl<T> Cached<T> {
    /// The cached value while `key(value)` still gives the stamps it was
    /// stored with; otherwise `load()`. A loaded value is kept only when it
    /// succeeded and every file it came from was last changed before the
    /// load started (minus [`SETTLE`]), so a change during the load is
    /// never missed.
    pub fn get<E>(
        &self,
        key: impl Fn(&T) -> Vec<Option<Stamp>>,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let cached = self.slot.lock().ok().and_then(|s| s.clone());
        if let Some((k, v)) = cached {
            if key(&v) == k {
                return Ok(v);
            }
        }
        let start = SystemTime::now().checked_sub(SETTLE).unwrap_or(UNIX_EPOCH);
        let value = Arc::new(load()?);
        let k = key(&value);
        let settled = k.iter().flatten().all(|s| s.changed_before(start));
        if let Ok(mut slot) = self.slot.lock() {
            *slot = settled.then(|| (k, value.clone()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_additions_and_removals_change_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let roots = vec![dir.path().to_owned()];
        std::fs::write(dir.path().join("a"), "1").unwrap();
        let k1 = stamps(&roots, 2);
        assert_eq!(k1, stamps(&roots, 2));
        std::fs::write(dir.path().join("a"), "22").unwrap();
        let k2 = stamps(&roots, 2);
        assert_ne!(k1, k2);
        std::fs::create_dir(dir.path().join("include")).unwrap();
        std::fs::write(dir.path().join("include/x"), "1").unwrap();
        let k3 = stamps(&roots, 2);
        assert_ne!(k2, k3);
        std::fs::write(dir.path().join("include/x"), "2").unwrap();
        assert_ne!(k3, stamps(&roots, 2), "a file in a subdirectory counts");
        let cache: Cached<u32> = Cached::default();
        let mut loads = 0;
        // Just written: not kept (a change in the same clock tick could be missed).
        cache
            .get(
                |_| stamps(&roots, 2),
                || {
                    loads += 1;
                    Ok::<_, ()>(7)
                },
            )
            .unwrap();
        std::thread::sleep(SETTLE * 2);
        for _ in 0..3 {
            cache
                .get(
                    |_| stamps(&roots, 2),
                    || {
                        loads += 1;
                        Ok::<_, ()>(7)
                    },
                )
                .unwrap();
        }
        assert_eq!(loads, 2, "loaded once more after settling, then kept");
        std::fs::remove_file(dir.path().join("a")).unwrap();
        let v = cache
            .get(
                |_| stamps(&roots, 2),
                || {
                    loads += 1;
                    Ok::<_, ()>(8)
                },
            )
            .unwrap();
        assert_eq!((loads, *v), (3, 8));
    }
}
