//! What the daemon keeps between calls (the policy, qubes.xml, the system
//! info file, pci.ids, dom0's PCI devices), and how it knows the moment
//! that is out of date: inotify watches on every file and directory a
//! value was read from, and for the devices the kernel's uevents too. No
//! call stats anything; one non-blocking read per call says whether
//! anything happened. Nothing is keyed by inode.
//!
//! A value is kept only when everything it was read from was watched
//! before it was read: a load notes the paths it used, watches them, and
//! loads again if it used a path that was not watched yet. A change during
//! the load leaves the value unkept, so the next call loads again.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// How many times a load may find paths it did not watch before the value
/// is used unkept.
const MAX_ROUNDS: usize = 4;

/// Changes under a set of paths.
pub struct Watch {
    inotify: Inotify,
    /// The directories and files watched.
    watched: BTreeSet<PathBuf>,
    /// The paths given to [`Watch::add`] (a missing one is watched through
    /// an ancestor).
    asked: BTreeSet<PathBuf>,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
}

impl Watch {
    pub fn new() -> nix::Result<Watch> {
        Ok(Watch {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            watched: BTreeSet::new(),
            asked: BTreeSet::new(),
        })
    }

    /// Watches `path`: the path itself (a directory reports what happens to
    /// its entries), its directory (a file replaced by a rename), and, when
    /// it is a link, where it leads. A path that does not exist is watched
    /// through its nearest existing ancestor, so its creation counts.
    /// `false` when no watch could be added.
    pub fn add(&mut self, path: &Path) -> bool {
        self.asked.insert(path.to_owned());
        let mut targets = vec![path.to_owned()];
        if let Some(parent) = path.parent() {
            targets.push(parent.to_owned());
        }
        if let Ok(real) = std::fs::canonicalize(path) {
            if real != path {
                if let Some(parent) = real.parent() {
                    targets.push(parent.to_owned());
                }
                targets.push(real);
            }
        }
        let mut ok = true;
        for t in targets {
            ok &= self.add_one(&t);
        }
        ok
    }

    fn add_one(&mut self, path: &Path) -> bool {
        if self.watched.contains(path) {
            return true;
        }
        let mut at = path;
        loop {
            if self.watched.contains(at) {
                return true;
            }
            match self.inotify.add_watch(at, mask()) {
                Ok(_) => {
                    self.watched.insert(at.to_owned());
                    return true;
                }
                Err(Errno::ENOENT | Errno::ENOTDIR) => match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => return false,
                },
                Err(e) => {
                    tracing::warn!(path = %at.display(), "cannot watch ({e}); this value is not kept");
                    return false;
                }
            }
        }
    }

    /// Whether `path` was given to [`Watch::add`] already.
    pub fn covers(&self, path: &Path) -> bool {
        self.asked.contains(path)
    }

    /// Whether anything happened since the last call; reads every pending
    /// event. A lost event (queue overflow) or a read error counts as a
    /// change.
    pub fn changed(&self) -> bool {
        let mut changed = false;
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => return changed,
                Ok(_) => changed = true,
                Err(Errno::EAGAIN) => return changed,
                Err(Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
    }
}

/// The watch of one kept value (made once: closing an inotify instance
/// waits for an RCU grace period, milliseconds, so it is never closed while
/// the daemon runs; its watches only grow) and the value, while valid.
struct Slot<T> {
    watch: Option<Watch>,
    value: Option<Arc<T>>,
}

/// One kept value. `paths` names what a value was read from (given `None`,
/// what any load reads first: the directories and files known up front).
pub struct Kept<T> {
    slot: Mutex<Slot<T>>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            slot: Mutex::new(Slot {
                watch: None,
                value: None,
            }),
        }
    }
}

impl<T> Kept<T> {
    /// The kept value while nothing it came from changed (and `also_stale`
    /// does not say otherwise); otherwise loads, watching first.
    pub fn get<E>(
        &self,
        paths: impl Fn(Option<&T>) -> Vec<PathBuf>,
        also_stale: impl FnOnce() -> bool,
        load: impl Fn() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let Ok(mut slot) = self.slot.lock() else {
            return load().map(Arc::new);
        };
        let stale_extra = also_stale();
        if slot.watch.is_none() {
            slot.watch = Watch::new().ok();
        }
        let slot = &mut *slot;
        let Some(watch) = slot.watch.as_mut() else {
            return load().map(Arc::new);
        };
        // Reading the events also clears them for the load below.
        let changed = watch.changed();
        if let Some(v) = &slot.value {
            if !changed && !stale_extra {
                return Ok(v.clone());
            }
        }
        slot.value = None;
        let mut complete = paths(None).iter().all(|p| watch.add(p));
        let mut value = load()?;
        for round in 0.. {
            let missing: Vec<PathBuf> = paths(Some(&value)).into_iter().filter(|p| !watch.covers(p)).collect();
            if missing.is_empty() {
                break;
            }
            if round >= MAX_ROUNDS {
                complete = false;
                break;
            }
            for p in &missing {
                complete &= watch.add(p);
            }
            // Read again now that everything it used is watched.
            value = load()?;
        }
        let value = Arc::new(value);
        // A change during the load: use it, but load again next time.
        if complete && !watch.changed() {
            slot.value = Some(value.clone());
        }
        Ok(value)
    }
}

/// The inode of the initial user namespace (`PROC_USER_INIT_INO`, fixed
/// by the kernel).
const INIT_USER_NS: &str = "user:[4026531837]";

/// Whether the kernel's device events reach this process: the kernel sends
/// them to the network namespaces owned by the initial user namespace
/// (`uevent_net_broadcast_untagged`), so a private network namespace
/// (systemd's `PrivateNetwork=`) gets them, one in a user namespace of its
/// own (`PrivateUsers=`) does not. Read from `<procfs>/self/ns/user`;
/// `Err` says why they do not, or why that cannot be told (then they are
/// taken not to).
pub fn kernel_uevents_reach(procfs: &std::path::Path) -> Result<(), String> {
    let link = procfs.join("self/ns/user");
    match std::fs::read_link(&link) {
        Ok(ns) if ns.as_os_str() == INIT_USER_NS => Ok(()),
        Ok(ns) => Err(format!(
            "it runs in a user namespace of its own ({}), whose network namespaces the kernel sends no device \
             events to",
            ns.display()
        )),
        Err(e) => Err(format!("cannot tell its user namespace from {}: {e}", link.display())),
    }
}

/// The kernel's device events (uevents): a netlink socket for the real
/// `/sys`, or, for a test tree, a datagram socket that a test writes
/// uevent messages to. Only PCI events count.
pub struct Uevents {
    fd: OwnedFd,
}

impl Uevents {
    /// Subscribes to the kernel's uevents.
    pub fn kernel() -> nix::Result<Uevents> {
        use nix::sys::socket::{bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
        Ok(Uevents { fd })
    }

    /// Receives uevent messages on a datagram socket (for tests).
    pub fn from_socket(socket: std::os::unix::net::UnixDatagram) -> std::io::Result<Uevents> {
        socket.set_nonblocking(true)?;
        Ok(Uevents { fd: socket.into() })
    }

    /// Whether a PCI device was added, removed, bound, unbound or changed
    /// since the last call. A lost message (ENOBUFS) or an error counts.
    pub fn changed(&self) -> bool {
        let mut changed = false;
        let mut buf = [0u8; 8192];
        loop {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(0) => return changed,
                Ok(n) => changed |= is_pci_event(buf.get(..n).unwrap_or_default()),
                Err(Errno::EAGAIN) => return changed,
                Err(Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
    }
}

/// `ACTION@DEVPATH\0KEY=VALUE\0…` with `SUBSYSTEM=pci`, or any message
/// udev sends on (`libudev` header: not parsed, counted as a change).
fn is_pci_event(msg: &[u8]) -> bool {
    if msg.starts_with(b"libudev") {
        return true;
    }
    msg.split(|&b| b == 0).any(|kv| kv == b"SUBSYSTEM=pci")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevents_reach_only_the_initial_user_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("self/ns");
        std::fs::create_dir_all(&ns).unwrap();
        assert!(kernel_uevents_reach(dir.path()).is_err(), "unknown: not believed");
        std::os::unix::fs::symlink("user:[4026531837]", ns.join("user")).unwrap();
        assert_eq!(kernel_uevents_reach(dir.path()), Ok(()));
        std::fs::remove_file(ns.join("user")).unwrap();
        std::os::unix::fs::symlink("user:[4026532412]", ns.join("user")).unwrap();
        let why = kernel_uevents_reach(dir.path()).unwrap_err();
        assert!(why.contains("user namespace of its own"), "{why}");
    }

    #[test]
    fn edits_additions_removals_and_replacements_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        std::fs::write(&file, "1").unwrap();
        let mut w = Watch::new().unwrap();
        assert!(w.add(&file));
        assert!(!w.changed());
        std::fs::write(&file, "2").unwrap();
        assert!(w.changed());
        assert!(!w.changed(), "drained");
        // Replaced by a rename, as editors and qubesd do.
        std::fs::write(dir.path().join("a.new"), "3").unwrap();
        let _ = w.changed();
        std::fs::rename(dir.path().join("a.new"), &file).unwrap();
        assert!(w.changed());
        // A path that does not exist yet: its creation counts.
        let later = dir.path().join("sub/deeper/b");
        assert!(w.add(&later));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(w.changed());
        // Reading changes nothing.
        let _ = std::fs::read(&file).unwrap();
        assert!(!w.changed());
    }

    #[test]
    fn a_kept_value_is_loaded_again_after_a_change_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v");
        std::fs::write(&file, "1").unwrap();
        let kept: Kept<String> = Kept::default();
        let loads = std::cell::Cell::new(0);
        let get = || {
            kept.get(
                |_| vec![file.clone()],
                || false,
                || {
                    loads.set(loads.get() + 1);
                    std::fs::read_to_string(&file)
                },
            )
            .unwrap()
        };
        assert_eq!(*get(), "1");
        assert_eq!(*get(), "1");
        assert_eq!(loads.get(), 1);
        // A value from a path that does not exist is kept too.
        let absent = dir.path().join("nothing/here");
        let kept_absent: Kept<bool> = Kept::default();
        let absent_loads = std::cell::Cell::new(0);
        for _ in 0..3 {
            kept_absent
                .get(
                    |_| vec![absent.clone()],
                    || false,
                    || {
                        absent_loads.set(absent_loads.get() + 1);
                        Ok::<_, ()>(absent.exists())
                    },
                )
                .unwrap();
        }
        assert_eq!(absent_loads.get(), 1);
        for i in 2..20 {
            std::fs::write(&file, i.to_string()).unwrap();
            assert_eq!(*get(), i.to_string(), "seen on the next call");
        }
        assert_eq!(loads.get(), 19);
    }

    #[test]
    fn paths_found_by_a_load_are_watched_and_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let inc = other.path().join("inc");
        std::fs::write(&top, inc.display().to_string()).unwrap();
        std::fs::write(&inc, "x").unwrap();
        let kept: Kept<(String, PathBuf)> = Kept::default();
        let loads = std::cell::Cell::new(0);
        let get = || {
            kept.get(
                |v| {
                    let mut p = vec![top.clone()];
                    p.extend(v.map(|(_, inc)| inc.clone()));
                    p
                },
                || false,
                || {
                    loads.set(loads.get() + 1);
                    let inc = PathBuf::from(std::fs::read_to_string(&top)?);
                    Ok::<_, std::io::Error>((std::fs::read_to_string(&inc)?, inc))
                },
            )
            .unwrap()
        };
        assert_eq!(get().0, "x");
        assert_eq!(loads.get(), 2, "loaded again once the include was watched");
        assert_eq!(get().0, "x");
        assert_eq!(loads.get(), 2);
        std::fs::write(&inc, "y").unwrap();
        assert_eq!(get().0, "y", "a change in a file outside the first paths is seen");
    }

    #[test]
    fn only_pci_uevents_count_and_each_is_seen_once() {
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let ev = Uevents::from_socket(rx).unwrap();
        assert!(!ev.changed());
        tx.send(b"add@/devices/virtual/net/vif1.0\0ACTION=add\0SUBSYSTEM=net\0")
            .unwrap();
        assert!(!ev.changed());
        tx.send(b"bind@/devices/pci0000:00/0000:00:14.0\0ACTION=bind\0SUBSYSTEM=pci\0DRIVER=pciback\0")
            .unwrap();
        assert!(ev.changed());
        assert!(!ev.changed());
        tx.send(b"unbind@/devices/pci0000:00/0000:00:14.0\0ACTION=unbind\0SUBSYSTEM=pci\0")
            .unwrap();
        tx.send(b"add@/devices/virtual/block/loop0\0SUBSYSTEM=block\0").unwrap();
        assert!(ev.changed());
    }
}
