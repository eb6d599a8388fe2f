//! Vendor, device and class names from pci.ids: the system file when there
//! is one, otherwise the copy built into the binary (from the `pci-ids`
//! crate's table, written out as pci.ids text by `build.rs`: one blob, no
//! relocation per entry, nothing done at start-up).
//!
//! A file is read once and indexed in one pass: the index holds the id and
//! the byte range of each name, sorted, and a lookup is a binary search.
//! The daemon keeps the index until the file changes.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where distributions install pci.ids: Fedora (dom0) first, then Debian.
pub const SYSTEM_PCI_IDS: [&str; 2] = ["/usr/share/hwdata/pci.ids", "/usr/share/misc/pci.ids"];

/// The built-in copy: vendors, devices, classes and subclasses.
static BUILTIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pci.ids"));

/// The largest pci.ids file read (the real one is about 1.5 MB).
const MAX_PCI_IDS: u64 = 64 << 20;

/// An indexed pci.ids.
#[derive(Debug)]
pub struct PciNames {
    text: Cow<'static, [u8]>,
    /// Where it came from: a file, or `None` for the built-in copy.
    pub origin: Option<PathBuf>,
    vendors: Vec<(u16, Range<u32>)>,
    /// Keyed by vendor << 16 | device.
    devices: Vec<(u32, Range<u32>)>,
    classes: Vec<(u8, Range<u32>)>,
    /// Keyed by class << 8 | subclass.
    subclasses: Vec<(u16, Range<u32>)>,
}

impl PciNames {
    /// `explicit`, else the first system file present, else the built-in
    /// copy. An explicit file that cannot be read is logged.
    pub fn load(explicit: Option<&Path>) -> PciNames {
        let candidates: Vec<PathBuf> = match explicit {
            Some(p) => vec![p.to_owned()],
            None => SYSTEM_PCI_IDS.iter().map(PathBuf::from).collect(),
        };
        for path in candidates {
            let read = std::fs::File::open(&path).and_then(|f| {
                let mut buf = Vec::new();
                f.take(MAX_PCI_IDS).read_to_end(&mut buf)?;
                Ok(buf)
            });
            match read {
                Ok(buf) => return PciNames::index(Cow::Owned(buf), Some(path)),
                Err(e) if explicit.is_some() => {
                    tracing::warn!(path = %path.display(), "cannot read pci.ids ({e}); using the built-in copy");
                }
                Err(_) => {}
            }
        }
        PciNames::builtin()
    }

    /// [`PciNames::load`] for a process that answers once: only what names
    /// the devices present is kept. The file is read through one reused
    /// buffer and every line is looked at by its first bytes; kept are the
    /// vendor lines, the device lines of the `vendors` given, and the
    /// class section, so a lookup for these gives what the whole file
    /// gives, without copying and indexing the whole 1.5 MB.
    pub fn load_for(explicit: Option<&Path>, vendors: &std::collections::BTreeSet<u16>) -> PciNames {
        for path in PciNames::candidates(explicit) {
            match std::fs::File::open(&path).and_then(|f| select(f.take(MAX_PCI_IDS), vendors)) {
                Ok(kept) => return PciNames::index(Cow::Owned(kept), Some(path)),
                Err(e) if explicit.is_some() => {
                    tracing::warn!(path = %path.display(), "cannot read pci.ids ({e}); using the built-in copy");
                }
                Err(_) => {}
            }
        }
        match select(BUILTIN, vendors) {
            Ok(kept) => PciNames::index(Cow::Owned(kept), None),
            Err(_) => PciNames::builtin(),
        }
    }

    /// The copy built into the binary.
    pub fn builtin() -> PciNames {
        PciNames::index(Cow::Borrowed(BUILTIN), None)
    }

    /// The files [`PciNames::load`] would look at, for watching.
    pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
        match explicit {
            Some(p) => vec![p.to_owned()],
            None => SYSTEM_PCI_IDS.iter().map(PathBuf::from).collect(),
        }
    }

    /// Indexes pci.ids text in one pass. Subsystem and programming
    /// interface lines (two tabs) are skipped; malformed lines are ignored.
    pub fn index(text: Cow<'static, [u8]>, origin: Option<PathBuf>) -> PciNames {
        let mut n = PciNames {
            vendors: Vec::with_capacity(2048),
            devices: Vec::with_capacity(16384),
            classes: Vec::new(),
            subclasses: Vec::new(),
            origin,
            text: Cow::Borrowed(&[]),
        };
        let bytes: &[u8] = &text;
        let mut vendor: Option<u16> = None;
        let mut class: Option<u8> = None;
        let mut start = 0usize;
        while start < bytes.len() {
            let end = bytes
                .get(start..)
                .and_then(|rest| memchr::memchr(b'\n', rest))
                .map_or(bytes.len(), |p| start + p);
            let line = bytes.get(start..end).unwrap_or_default();
            let at = |off: usize| u32::try_from(start + off).unwrap_or(u32::MAX);
            match line {
                [b'#', ..] | [] => {}
                [b'\t', b'\t', ..] => {}
                [b'C', b' ', rest @ ..] => {
                    vendor = None;
                    class = id_and_name(rest, 2).map(|(c, r)| {
                        n.classes.push((c as u8, at(2 + r.start)..at(2 + r.end)));
                        c as u8
                    });
                }
                [b'\t', rest @ ..] => {
                    if let Some(c) = class {
                        if let Some((sub, r)) = id_and_name(rest, 2) {
                            n.subclasses
                                .push((u16::from(c) << 8 | sub as u16, at(1 + r.start)..at(1 + r.end)));
                        }
                    } else if let Some(v) = vendor {
                        if let Some((d, r)) = id_and_name(rest, 4) {
                            n.devices.push((u32::from(v) << 16 | d, at(1 + r.start)..at(1 + r.end)));
                        }
                    }
                }
                _ => {
                    class = None;
                    vendor = id_and_name(line, 4).map(|(v, r)| {
                        n.vendors.push((v as u16, at(r.start)..at(r.end)));
                        v as u16
                    });
                }
            }
            start = end + 1;
        }
        // Stable sorts: for an id listed twice the first entry wins, as a
        // scan from the top would find it.
        n.vendors.sort_by_key(|e| e.0);
        n.devices.sort_by_key(|e| e.0);
        n.classes.sort_by_key(|e| e.0);
        n.subclasses.sort_by_key(|e| e.0);
        n.text = text;
        n
    }

    fn name<K: Ord + Copy>(&self, table: &[(K, Range<u32>)], key: K) -> Option<String> {
        let i = table.partition_point(|e| e.0 < key);
        let (k, r) = table.get(i)?;
        if *k != key {
            return None;
        }
        let bytes = self.text.get(r.start as usize..r.end as usize)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    pub fn vendor(&self, vendor: u16) -> Option<String> {
        self.name(&self.vendors, vendor)
    }

    pub fn device(&self, vendor: u16, device: u16) -> Option<String> {
        self.name(&self.devices, u32::from(vendor) << 16 | u32::from(device))
    }

    /// The subclass name, or the class name when the subclass is unknown.
    pub fn class(&self, class: u8, subclass: u8) -> Option<String> {
        self.name(&self.subclasses, u16::from(class) << 8 | u16::from(subclass))
            .or_else(|| self.name(&self.classes, class))
    }
}

/// The lines of pci.ids text that name `vendors`' devices, every vendor
/// and every class (see [`PciNames::load_for`]), read in chunks.
fn select(mut from: impl Read, vendors: &std::collections::BTreeSet<u16>) -> std::io::Result<Vec<u8>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Section {
        Kept,
        Skipped,
    }
    let mut kept = Vec::with_capacity(64 << 10);
    let mut section = Section::Skipped;
    let mut keep_line = |line: &[u8], kept: &mut Vec<u8>| {
        let keep = match line {
            [] | [b'#', ..] | [b'\t', b'\t', ..] => false,
            [b'\t', ..] => section == Section::Kept,
            [b'C', b' ', ..] => {
                section = Section::Kept;
                true
            }
            _ => {
                // A vendor line (or a malformed one, kept so that it ends
                // the section before it, as in the whole file).
                let wanted =
                    id_and_name(line, 4).is_some_and(|(v, _)| u16::try_from(v).is_ok_and(|v| vendors.contains(&v)));
                section = if wanted { Section::Kept } else { Section::Skipped };
                true
            }
        };
        if keep {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    // The part of a line the previous chunk ended in.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk) {
            let piece = chunk.get(start..end).unwrap_or_default();
            if partial.is_empty() {
                keep_line(piece, &mut kept);
            } else {
                partial.extend_from_slice(piece);
                keep_line(&partial, &mut kept);
                partial.clear();
            }
            start = end + 1;
        }
        partial.extend_from_slice(chunk.get(start..).unwrap_or_default());
    }
    if !partial.is_empty() {
        keep_line(&partial, &mut kept);
    }
    Ok(kept)
}

/// `ID  NAME`: the id of `digits` hex digits and the trimmed name's range
/// within `s`.
fn id_and_name(s: &[u8], digits: usize) -> Option<(u32, Range<usize>)> {
    let id = std::str::from_utf8(s.get(..digits)?).ok()?;
    let id = u32::from_str_radix(id, 16).ok()?;
    let rest = s.get(digits..)?;
    let lead = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let trail = rest.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
    let end = rest.len().saturating_sub(trail).max(lead);
    Some((id, digits + lead..digits + end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\n8086  Intel Corporation\n\t8cb1  9 Series Chipset Family USB xHCI Controller\n\t\t17aa 2214  ThinkPad\n10de  NVIDIA\n\t1234  Some GPU\r\nC 0c  Serial bus controller\n\t03  USB controller\n\t\t30  XHCI\nC 02  Network controller\n";

    #[test]
    fn file_names_by_id() {
        let n = PciNames::index(Cow::Owned(SAMPLE.as_bytes().to_vec()), None);
        assert_eq!(n.vendor(0x8086).as_deref(), Some("Intel Corporation"));
        assert_eq!(
            n.device(0x8086, 0x8cb1).as_deref(),
            Some("9 Series Chipset Family USB xHCI Controller")
        );
        assert_eq!(n.device(0x10de, 0x1234).as_deref(), Some("Some GPU"));
        // Subsystem lines are not devices.
        assert_eq!(n.device(0x8086, 0x17aa), None);
        assert_eq!(n.vendor(0x10df), None);
        assert_eq!(n.class(0x0c, 0x03).as_deref(), Some("USB controller"));
        assert_eq!(n.class(0x0c, 0x30).as_deref(), Some("Serial bus controller"));
        assert_eq!(n.class(0x02, 0x00).as_deref(), Some("Network controller"));
        assert_eq!(n.class(0x03, 0x00), None);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let n = PciNames::index(
            Cow::Owned(b"zzzz  bad\n\tffff  orphan\n8086\n1af4  Red Hat\n\t1000  Virtio\n".to_vec()),
            None,
        );
        assert_eq!(n.vendor(0x8086).as_deref(), Some(""));
        assert_eq!(n.device(0x1af4, 0x1000).as_deref(), Some("Virtio"));
        assert_eq!(n.device(0x8086, 0xffff), None);
    }

    /// Names kept for the vendors present are the names the whole file
    /// gives them, across chunk boundaries and with a duplicate vendor, a
    /// malformed line and a last line without a newline.
    #[test]
    fn a_selective_load_names_the_devices_present_as_the_whole_file_does() {
        let mut text = String::from(SAMPLE);
        text.push_str("zzzz  bad\n\tffff  orphan\n8086  Intel again\n\t0001  Second\n");
        // Long enough that lines straddle the reader's chunks.
        for v in 0x9000..0x9400u32 {
            text.push_str(&format!(
                "{v:04x}  Vendor {v:04x}\n\t0001  Device of {v:04x}\n\t\t0001 0002  Sub\n"
            ));
        }
        text.push_str("C 0d  Wireless controller\n\t11  Bluetooth");
        let whole = PciNames::index(Cow::Owned(text.clone().into_bytes()), None);
        let wanted: std::collections::BTreeSet<u16> = [0x8086, 0x9123, 0x93ff, 0x1234].into();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pci.ids");
        std::fs::write(&file, &text).unwrap();
        let some = PciNames::load_for(Some(&file), &wanted);
        for v in [0x8086u16, 0x10de, 0x9123, 0x93ff, 0x9000, 0x1234, 0x1af4] {
            assert_eq!(some.vendor(v), whole.vendor(v), "{v:04x}");
        }
        for (v, d) in [
            (0x8086u16, 0x8cb1u16),
            (0x8086, 0x0001),
            (0x9123, 1),
            (0x93ff, 1),
            (0x8086, 0xffff),
        ] {
            assert_eq!(some.device(v, d), whole.device(v, d), "{v:04x}:{d:04x}");
        }
        assert_eq!(some.device(0x9123, 1).as_deref(), Some("Device of 9123"));
        // Not asked for: not read.
        assert_eq!(some.device(0x9000, 1), None);
        for (c, sc) in [(0x0c, 0x03), (0x0c, 0x30), (0x02, 0), (0x0d, 0x11), (0x03, 0)] {
            assert_eq!(some.class(c, sc), whole.class(c, sc), "{c:02x}{sc:02x}");
        }
        let builtin = PciNames::load_for(Some(&dir.path().join("absent")), &wanted);
        assert_eq!(builtin.origin, None);
        assert_eq!(builtin.vendor(0x8086).as_deref(), Some("Intel Corporation"));
    }

    #[test]
    fn builtin_copy_knows_intel() {
        let n = PciNames::builtin();
        assert_eq!(n.vendor(0x8086).as_deref(), Some("Intel Corporation"));
        assert_eq!(n.class(0x0c, 0x03).as_deref(), Some("USB controller"));
        assert_eq!(n.class(0x02, 0x7f).as_deref(), Some("Network controller"));
    }
}
