//! The PCI devices dom0 itself is using, which a qube must not be given:
//! the console GPU (`boot_vga`), the controllers under a filesystem dom0
//! has mounted, its swap, or the disks under a device-mapper device it
//! uses, and the controllers its input devices hang on.
//!
//! Read from sysfs (`<sysfs>/dev/block`, `<sysfs>/class/block`,
//! `<sysfs>/class/input`) and procfs (`<procfs>/self/mountinfo`,
//! `<procfs>/swaps`), both roots configurable so tests give their own.

use std::collections::BTreeMap;
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

/// The most read of one procfs file.
const MAX_PROC_FILE: u64 = 4 << 20;
/// How deep device-mapper stacks are followed.
const MAX_DM_DEPTH: usize = 8;

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

/// Every use dom0 has for PCI devices, by address.
pub fn scan(sysfs: &Path, procfs: &Path) -> BTreeMap<Sbdf, Vec<Dom0Use>> {
    let mut out: BTreeMap<Sbdf, Vec<Dom0Use>> = BTreeMap::new();
    let add = |real: &Path, what: &'static str, detail: String, out: &mut BTreeMap<Sbdf, Vec<Dom0Use>>| {
        if let Some(sbdf) = pci_ancestor(real) {
            let uses = out.entry(sbdf).or_default();
            if !uses.iter().any(|u| u.what == what) {
                uses.push(Dom0Use { what, detail });
            }
        }
    };
    // Filesystems dom0 has mounted (major 0 is a virtual filesystem).
    if let Some(mountinfo) = read_small(&procfs.join("self/mountinfo")) {
        for line in mountinfo.lines() {
            let mut f = line.split(' ');
            let (Some(_), Some(_), Some(devno), Some(_), Some(mountpoint)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if devno.starts_with("0:") {
                continue;
            }
            for real in block_disks(sysfs, &sysfs.join("dev/block").join(devno), 0) {
                add(
                    &real,
                    "it holds a filesystem dom0 has mounted",
                    format!("{devno} mounted on {mountpoint}"),
                    &mut out,
                );
            }
        }
    }
    // Swap on a block device.
    if let Some(swaps) = read_small(&procfs.join("swaps")) {
        for name in swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()) {
            let Some(dev) = name.strip_prefix("/dev/") else {
                continue;
            };
            let dev = dev.rsplit('/').next().unwrap_or(dev);
            for real in block_disks(sysfs, &sysfs.join("class/block").join(dev), 0) {
                add(&real, "it holds dom0's swap", name.to_owned(), &mut out);
            }
        }
    }
    // Input devices dom0 reads (keyboard, mouse, touchpad).
    if let Ok(entries) = std::fs::read_dir(sysfs.join("class/input")) {
        for e in entries.flatten() {
            if let Ok(real) = std::fs::canonicalize(e.path().join("device")) {
                let name = e.file_name().to_string_lossy().into_owned();
                add(&real, "dom0's input devices are attached to it", name, &mut out);
            }
        }
    }
    // The console GPU.
    if let Ok(entries) = std::fs::read_dir(sysfs.join("bus/pci/devices")) {
        for e in entries.flatten() {
            let on = read_small(&e.path().join("boot_vga")).is_some_and(|v| v.trim() == "1");
            if let (true, Ok(real)) = (on, std::fs::canonicalize(e.path())) {
                add(&real, "it is dom0's console GPU (boot_vga)", String::new(), &mut out);
            }
        }
    }
    out
}

/// The real sysfs directories of the disks under a block device: itself,
/// or for a device-mapper (or md) device, what its `slaves` are, followed
/// down the stack.
fn block_disks(sysfs: &Path, link: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(real) = std::fs::canonicalize(link) else {
        return Vec::new();
    };
    let slaves = real.join("slaves");
    let below: Vec<PathBuf> = match (depth < MAX_DM_DEPTH, std::fs::read_dir(&slaves)) {
        (true, Ok(entries)) => entries
            .flatten()
            .flat_map(|e| block_disks(sysfs, &sysfs.join("class/block").join(e.file_name()), depth + 1))
            .collect(),
        _ => Vec::new(),
    };
    if below.is_empty() {
        vec![real]
    } else {
        below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_and_uses() {
        assert_eq!(
            pci_ancestor(Path::new(
                "/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p2"
            )),
            Sbdf::parse("0000:02:00.0").ok()
        );
        assert_eq!(pci_ancestor(Path::new("/sys/devices/virtual/block/dm-0")), None);
        let dir = tempfile::tempdir().unwrap();
        assert!(scan(dir.path(), dir.path()).is_empty(), "nothing readable: no use");
    }
}
