//! The assignment store: one file in the state dir, replaced atomically
//! (temp file, fsync, rename, fsync of the directory) under an exclusive
//! `flock` on a separate lock file, read under a shared lock. A damaged
//! store or one of an unknown version is reported, never reset.

pub mod format;
pub mod model;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

pub use format::FormatError;
pub use model::{Hold, Record, State};

/// The data file's name in the state dir.
pub const FILE: &str = "assignments.bin";
/// The previous generation, kept for recovery.
pub const PREVIOUS: &str = "assignments.bin.prev";
const LOCK: &str = "assignments.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the assignment store {path} cannot be used: {reason}. Nothing was changed and the file was left as it is. \
         Look at it with `qubes-pci-admin store dump`; to recover, move it aside and put back the previous \
         generation ({path}.prev) or re-create the assignments (`qubes-pci-admin import-qubes-xml /var/lib/qubes/qubes.xml`)"
    )]
    Damaged { path: PathBuf, reason: FormatError },
    #[error(
        "the assignment store {path} was written by a newer qubes-pci-admin ({reason}). Nothing was changed; \
         install that version again, or a newer one"
    )]
    TooNew { path: PathBuf, reason: FormatError },
    #[error("cannot {what} {path}: {source}; check that the state dir exists and is writable by the service")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A store rooted in a state dir.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn lock(&self, arg: FlockArg) -> Result<Option<Flock<File>>, StoreError> {
        let path = self.dir.join(LOCK);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Ok(f) => f,
            // A reader of a state dir that was never written: nothing to lock.
            Err(e) if e.kind() == ErrorKind::NotFound && arg == FlockArg::LockShared => return Ok(None),
            Err(e) => return Err(io("open the lock file", &path)(e)),
        };
        Flock::lock(file, arg)
            .map(Some)
            .map_err(|(_, errno)| io("lock", &path)(std::io::Error::from(errno)))
    }

    fn load_unlocked(&self) -> Result<State, StoreError> {
        let path = self.path();
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(format::MAX_BODY as u64 + 64)
            .read_to_end(&mut bytes)
            .map_err(io("read", &path))?;
        format::decode(&bytes).map_err(|reason| match reason {
            FormatError::UnknownVersion(_) => StoreError::TooNew { path, reason },
            reason => StoreError::Damaged { path, reason },
        })
    }

    /// Reads the store under a shared lock. A missing store is empty.
    pub fn read(&self) -> Result<State, StoreError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        self.load_unlocked()
    }

    /// Runs `f` on the current state under the exclusive lock; when `f`
    /// succeeds and changed the state, the new state (with the next
    /// generation) is on disk before this returns. A store that does not
    /// load is an error and `f` is not run.
    pub fn update<T, E: From<StoreError>>(&self, f: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E> {
        std::fs::create_dir_all(&self.dir).map_err(|e| E::from(io("create the state dir", &self.dir)(e)))?;
        let _lock = self.lock(FlockArg::LockExclusive)?;
        self.remove_leftovers();
        let before = self.load_unlocked()?;
        let mut state = before.clone();
        let out = f(&mut state)?;
        if state != before {
            state.generation = before.generation.wrapping_add(1);
            self.write_unlocked(&state)?;
        }
        Ok(out)
    }

    /// Temporary files of writers that were killed mid-write. Only called
    /// under the exclusive lock, when no writer can be using one.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".assignments.") && name.ends_with(".tmp") {
                tracing::info!(file = %name, "removing the temporary file of an interrupted write");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn write_unlocked(&self, state: &State) -> Result<(), StoreError> {
        let path = self.path();
        let bytes = format::encode(state).map_err(|reason| StoreError::Damaged {
            path: path.clone(),
            reason,
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".assignments.")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io("create a temporary file in", &self.dir))?;
        tmp.write_all(&bytes).map_err(io("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io("fsync", &path))?;
        // Keep the previous generation for recovery: a hard link, so the
        // data file itself is never absent.
        let prev = self.dir.join(PREVIOUS);
        match std::fs::remove_file(&prev) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &prev)(e)),
        }
        match std::fs::hard_link(&path, &prev) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("link", &prev)(e)),
        }
        tmp.persist(&path).map_err(|e| io("rename into", &path)(e.error))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the directory", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qubes_pci_rpc::{AssignmentMode, PciOptions, PciPath, QubeName, Wild};

    fn rec(q: &str, port: &str) -> Record {
        Record {
            frontend: QubeName::parse(q).unwrap(),
            port: PciPath::parse(port).unwrap(),
            device_id: Wild::Any,
            mode: AssignmentMode::Required,
            options: PciOptions::default(),
            sbdf: None,
        }
    }

    #[test]
    fn writes_survive_reopen_and_bump_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        assert_eq!(store.read().unwrap(), State::default());
        store
            .update(|s| {
                s.assignments.push(rec("work", "00_14.0"));
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let again = Store::new(dir.path().join("state")).read().unwrap();
        assert_eq!(again.generation, 1);
        assert_eq!(again.assignments, vec![rec("work", "00_14.0")]);
        // No change, no write.
        store.update(|_| Ok::<_, StoreError>(())).unwrap();
        assert_eq!(store.read().unwrap().generation, 1);
        // The previous generation is kept.
        store
            .update(|s| {
                s.assignments.clear();
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let prev = format::decode(&std::fs::read(dir.path().join("state").join(PREVIOUS)).unwrap()).unwrap();
        assert_eq!(prev.generation, 1);
    }

    #[test]
    fn damaged_store_is_reported_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.path(), b"QPCISTOR garbage that is not a store").unwrap();
        let err = store.read().unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("move it aside"), "{err}");
        let w = store.update(|s| {
            s.assignments.push(rec("work", "00_14.0"));
            Ok::<_, StoreError>(())
        });
        assert!(matches!(w, Err(StoreError::Damaged { .. })));
        assert_eq!(
            std::fs::read(store.path()).unwrap(),
            b"QPCISTOR garbage that is not a store"
        );
    }

    #[test]
    fn failing_closure_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let r: Result<(), StoreError> = store.update(|s| {
            s.assignments.push(rec("work", "00_14.0"));
            Err(StoreError::Io {
                what: "test",
                path: PathBuf::new(),
                source: std::io::Error::other("x"),
            })
        });
        assert!(r.is_err());
        assert!(!store.path().exists());
    }
}
