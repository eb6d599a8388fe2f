//! The PCI devices dom0 itself is using, which a qube must not be given:
//! the console GPU (`boot_vga`), the controllers its input devices hang
//! on, and every controller under the storage dom0 uses, traced the way
//! the kernel shows it:
//!
//! * every filesystem dom0 has mounted: by its device number
//!   (`/sys/dev/block/MAJ:MIN`), and for those the kernel shows with an
//!   anonymous number (`0:NN`, as btrfs does) by their source
//!   (`/dev/mapper/NAME`, `/dev/NAME`) and by every btrfs filesystem's
//!   devices (`/sys/fs/btrfs/FSID/devices`);
//! * its swap, on a partition, a logical volume or a file (through the
//!   filesystem the file is on);
//! * every block device with `holders/`: an active device-mapper or md
//!   stack (LUKS, LVM, a thin pool of other qubes' volumes, RAID), mounted
//!   or not;
//! * each of these followed down through `slaves/` to the disks, and from
//!   a disk, partition or namespace up its sysfs path to the PCI function.
//!
//! When that picture cannot be read (an unreadable `mountinfo`, a mounted
//! block device that cannot be found in sysfs), nothing can be ruled out:
//! [`Dom0Picture::uses`] then gives every device a use saying so, so a
//! qube's request is refused (fail closed) and dom0's own is warned.
//!
//! Read from sysfs (`<sysfs>/class/block`, `<sysfs>/dev/block`,
//! `<sysfs>/fs/btrfs`, `<sysfs>/class/input`, `<sysfs>/bus/pci/devices`) and
//! procfs (`<procfs>/self/mountinfo`, `<procfs>/swaps`), both roots
//! configurable so tests give their own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use qubes_pci_rpc::Sbdf;

/// Why dom0 needs a device. The text is what a qube may be told; `detail`
/// (mount points, block devices) is for dom0's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dom0Use {
    pub what: &'static str,
    pub detail: String,
}

pub const MOUNTED: &str = "it holds a filesystem dom0 has mounted";
pub const SWAP: &str = "it holds dom0's swap";
pub const STACK: &str = "it holds an active device-mapper or md device (dom0's LVM, LUKS or RAID)";
pub const INPUT: &str = "dom0's input devices are attached to it";
pub const CONSOLE: &str = "it is dom0's console GPU (boot_vga)";
pub const UNKNOWN: &str =
    "dom0's storage could not be read, so it cannot be ruled out that dom0 uses it (a dom0 administrator can \
     find why in the journal)";

/// The most read of one procfs file.
const MAX_PROC_FILE: u64 = 4 << 20;
/// How deep block-device stacks are followed.
const MAX_DEPTH: usize = 16;

/// What dom0 uses, by PCI function, and what could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dom0Picture {
    by_device: BTreeMap<Sbdf, Vec<Dom0Use>>,
    /// Why the picture is incomplete (for the journal); empty when whole.
    pub unreadable: Vec<String>,
}

impl Dom0Picture {
    /// dom0's uses of the function at `sbdf`; when the picture could not
    /// be read, also that nothing can be ruled out.
    pub fn uses(&self, sbdf: &Sbdf) -> Vec<Dom0Use> {
        let mut out = self.by_device.get(sbdf).cloned().unwrap_or_default();
        if !self.unreadable.is_empty() {
            out.push(Dom0Use {
                what: UNKNOWN,
                detail: self.unreadable.join("; "),
            });
        }
        out
    }

    fn add(&mut self, real: &Path, what: &'static str, detail: String) {
        if let Some(sbdf) = pci_ancestor(real) {
            let uses = self.by_device.entry(sbdf).or_default();
            if !uses.iter().any(|u| u.what == what) {
                uses.push(Dom0Use { what, detail });
            }
        }
    }
}

fn read_small(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_PROC_FILE)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The closest PCI device above a sysfs device directory: the last path
/// component that reads as a PCI address.
fn pci_ancestor(real: &Path) -> Option<Sbdf> {
    real.components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str())
        .find_map(|c| Sbdf::parse(c).ok())
}

/// The names in a directory (empty when it cannot be read).
fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// dom0's block devices as sysfs shows them.
struct Blocks<'a> {
    sysfs: &'a Path,
}

impl Blocks<'_> {
    /// The real directory of the block device `name` (`class/block/NAME`).
    fn dir(&self, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        std::fs::canonicalize(self.sysfs.join("class/block").join(name)).ok()
    }

    /// The real directories of the disks (partitions, namespaces) under a
    /// block device: itself, or what its `slaves` are, followed down.
    fn disks(&self, dir: &Path, depth: usize) -> Vec<PathBuf> {
        let below: Vec<PathBuf> = if depth < MAX_DEPTH {
            names(&dir.join("slaves"))
                .iter()
                .filter_map(|s| self.dir(s))
                .flat_map(|d| self.disks(&d, depth + 1))
                .collect()
        } else {
            Vec::new()
        };
        if below.is_empty() {
            vec![dir.to_owned()]
        } else {
            below
        }
    }

    /// The block device a mount source or swap device names: `/dev/NAME`,
    /// `/dev/mapper/NAME` (a device-mapper name), `/dev/md/NAME`.
    fn by_dev_path(&self, dev: &str) -> Option<PathBuf> {
        let rest = dev.strip_prefix("/dev/")?;
        if let Some(dm) = rest.strip_prefix("mapper/") {
            return names(&self.sysfs.join("class/block"))
                .into_iter()
                .filter_map(|n| self.dir(&n))
                .find(|d| read_small(&d.join("dm/name")).is_some_and(|n| n.trim() == dm));
        }
        if let Some(md) = rest.strip_prefix("md/") {
            return names(&self.sysfs.join("class/block"))
                .into_iter()
                .filter_map(|n| self.dir(&n))
                .find(|d| read_small(&d.join("md/array_state")).is_some() && d.file_name().is_some_and(|f| f == md))
                .or_else(|| self.dir(md));
        }
        self.dir(rest)
    }
}

/// One line of `mountinfo`: device number, mount point, type, source.
struct Mount<'a> {
    devno: &'a str,
    point: String,
    fstype: &'a str,
    source: &'a str,
}

fn mounts(text: &str) -> Vec<Mount<'_>> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mut f = head.split(' ');
            let (_, _, devno, _, point) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let mut t = tail.split(' ');
            Some(Mount {
                devno,
                point: unescape(point),
                fstype: t.next()?,
                source: t.next()?,
            })
        })
        .collect()
}

/// mountinfo and swaps escape space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = rest.get(i + 4..).unwrap_or_default();
            }
            None => {
                out.push('\\');
                rest = rest.get(i + 1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every use dom0 has for PCI devices.
pub fn scan(sysfs: &Path, procfs: &Path) -> Dom0Picture {
    let mut picture = Dom0Picture::default();
    let blocks = Blocks { sysfs };
    // Filesystems dom0 has mounted, and their disks by mount point (for
    // swap files).
    let mountinfo = read_small(&procfs.join("self/mountinfo"));
    let Some(mountinfo) = mountinfo else {
        picture
            .unreadable
            .push(format!("cannot read {}", procfs.join("self/mountinfo").display()));
        return picture;
    };
    let all = mounts(&mountinfo);
    let mut disks_at: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for m in &all {
        let found = if !m.devno.starts_with("0:") {
            let dir = std::fs::canonicalize(sysfs.join("dev/block").join(m.devno)).ok();
            if dir.is_none() {
                picture.unreadable.push(format!(
                    "{} ({}) is mounted on {} but not in sysfs",
                    m.devno, m.source, m.point
                ));
            }
            dir
        } else if m.source.starts_with("/dev/") {
            // An anonymous device number (btrfs): the source names the
            // device; every btrfs filesystem's devices are read below too.
            let dir = blocks.by_dev_path(m.source);
            if dir.is_none() && m.fstype != "btrfs" {
                picture.unreadable.push(format!(
                    "{} ({}) is mounted on {} but not in sysfs",
                    m.source, m.fstype, m.point
                ));
            }
            dir
        } else {
            None
        };
        let disks = found.map(|d| blocks.disks(&d, 0)).unwrap_or_default();
        for d in &disks {
            picture.add(d, MOUNTED, format!("{} mounted on {}", m.source, m.point));
        }
        disks_at.push((m.point.clone(), disks));
    }
    // Every btrfs filesystem (its directory under /sys/fs/btrfs exists
    // while it is mounted), with all of its devices.
    let btrfs_mounted = all.iter().any(|m| m.fstype == "btrfs");
    let btrfs = sysfs.join("fs/btrfs");
    match std::fs::read_dir(&btrfs) {
        Ok(_) => {
            for fsid in names(&btrfs).iter().filter(|n| n.len() == 36 && n.contains('-')) {
                for dev in names(&btrfs.join(fsid).join("devices")) {
                    let dir = std::fs::canonicalize(btrfs.join(fsid).join("devices").join(&dev))
                        .ok()
                        .or_else(|| blocks.dir(&dev));
                    for d in dir.map(|d| blocks.disks(&d, 0)).unwrap_or_default() {
                        picture.add(&d, MOUNTED, format!("btrfs {fsid} on {dev}"));
                    }
                }
            }
        }
        Err(e) if btrfs_mounted => picture.unreadable.push(format!(
            "a btrfs filesystem is mounted but {} cannot be read: {e}",
            btrfs.display()
        )),
        Err(_) => {}
    }
    // Swap: on a block device, or in a file (the filesystem it is on).
    match read_small(&procfs.join("swaps")) {
        Some(swaps) => {
            for line in swaps.lines().skip(1) {
                let mut f = line.split_whitespace();
                let (Some(name), kind) = (f.next(), f.next().unwrap_or_default()) else {
                    continue;
                };
                let name = unescape(name);
                let disks = if kind == "file" {
                    disks_at
                        .iter()
                        .filter(|(point, _)| {
                            name.starts_with(point.as_str())
                                && (point == "/" || name.get(point.len()..).is_some_and(|r| r.starts_with('/')))
                        })
                        .max_by_key(|(point, _)| point.len())
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default()
                } else {
                    blocks
                        .by_dev_path(&name)
                        .map(|d| blocks.disks(&d, 0))
                        .unwrap_or_default()
                };
                if disks.is_empty() {
                    picture
                        .unreadable
                        .push(format!("swap {name} ({kind}) is not found in sysfs"));
                }
                for d in &disks {
                    picture.add(d, SWAP, name.clone());
                }
            }
        }
        None => picture
            .unreadable
            .push(format!("cannot read {}", procfs.join("swaps").display())),
    }
    // Active stacks: any block device something holds (dm, md, LUKS, LVM),
    // mounted or not, and what is below it.
    for name in names(&sysfs.join("class/block")) {
        let Some(dir) = blocks.dir(&name) else { continue };
        let holders = names(&dir.join("holders"));
        if holders.is_empty() {
            continue;
        }
        for d in blocks.disks(&dir, 0) {
            picture.add(&d, STACK, format!("{name} is held by {}", holders.join(", ")));
        }
    }
    // Input devices dom0 reads (keyboard, mouse, touchpad).
    for name in names(&sysfs.join("class/input")) {
        if let Ok(real) = std::fs::canonicalize(sysfs.join("class/input").join(&name).join("device")) {
            picture.add(&real, INPUT, name);
        }
    }
    // The console GPU.
    for name in names(&sysfs.join("bus/pci/devices")) {
        let dir = sysfs.join("bus/pci/devices").join(&name);
        let on = read_small(&dir.join("boot_vga")).is_some_and(|v| v.trim() == "1");
        if let (true, Ok(real)) = (on, std::fs::canonicalize(&dir)) {
            picture.add(&real, CONSOLE, String::new());
        }
    }
    picture.unreadable = picture
        .unreadable
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    picture
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_and_escapes() {
        assert_eq!(
            pci_ancestor(Path::new(
                "/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p2"
            )),
            Sbdf::parse("0000:02:00.0").ok()
        );
        assert_eq!(pci_ancestor(Path::new("/sys/devices/virtual/block/dm-0")), None);
        assert_eq!(unescape(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape(r"/x\0"), r"/x\0");
    }

    #[test]
    fn nothing_readable_is_no_picture() {
        let dir = tempfile::tempdir().unwrap();
        let p = scan(dir.path(), dir.path());
        let any = Sbdf::parse("0000:00:14.0").unwrap();
        assert!(!p.unreadable.is_empty());
        assert_eq!(p.uses(&any).len(), 1, "fail closed: {:?}", p.uses(&any));
        assert_eq!(p.uses(&any)[0].what, UNKNOWN);
    }
}
