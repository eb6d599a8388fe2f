//! Vendor, device and class names from pci.ids: the system file when there
//! is one, otherwise the copy built into the binary (crate `pci-ids`).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Where distributions install pci.ids: Fedora (dom0) first, then Debian.
pub const SYSTEM_PCI_IDS: [&str; 2] = ["/usr/share/hwdata/pci.ids", "/usr/share/misc/pci.ids"];

/// Names from a pci.ids file, kept only for the ids asked for.
#[derive(Debug, Default)]
struct FileNames {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
    classes: HashMap<u8, String>,
    subclasses: HashMap<(u8, u8), String>,
}

#[derive(Debug)]
enum Source {
    File(Box<FileNames>),
    Embedded,
}

/// Name lookups for one call.
#[derive(Debug)]
pub struct PciNames(Source);

impl PciNames {
    /// Loads names for the `(vendor, device)` pairs in `wanted`, from
    /// `explicit`, else the first system file present, else the built-in copy.
    pub fn load(explicit: Option<&Path>, wanted: &BTreeSet<(u16, u16)>) -> PciNames {
        let candidates: Vec<PathBuf> = match explicit {
            Some(p) => vec![p.to_owned()],
            None => SYSTEM_PCI_IDS.iter().map(PathBuf::from).collect(),
        };
        for path in candidates {
            match std::fs::File::open(&path) {
                Ok(f) => return PciNames(Source::File(Box::new(parse(BufReader::new(f), wanted)))),
                Err(e) if explicit.is_some() => {
                    tracing::warn!(path = %path.display(), "cannot read pci.ids ({e}); using the built-in copy");
                }
                Err(_) => {}
            }
        }
        PciNames(Source::Embedded)
    }

    pub fn vendor(&self, vendor: u16) -> Option<String> {
        match &self.0 {
            Source::File(n) => n.vendors.get(&vendor).cloned(),
            Source::Embedded => pci_ids::Vendors::iter()
                .find(|v| v.id() == vendor)
                .map(|v| v.name().to_owned()),
        }
    }

    pub fn device(&self, vendor: u16, device: u16) -> Option<String> {
        match &self.0 {
            Source::File(n) => n.devices.get(&(vendor, device)).cloned(),
            Source::Embedded => pci_ids::Device::from_vid_pid(vendor, device).map(|d| d.name().to_owned()),
        }
    }

    /// The subclass name, or the class name when the subclass is unknown.
    pub fn class(&self, class: u8, subclass: u8) -> Option<String> {
        match &self.0 {
            Source::File(n) => n
                .subclasses
                .get(&(class, subclass))
                .or_else(|| n.classes.get(&class))
                .cloned(),
            Source::Embedded => pci_ids::Subclass::from_cid_sid(class, subclass)
                .map(|s| s.name().to_owned())
                .or_else(|| {
                    pci_ids::Classes::iter()
                        .find(|c| c.id() == class)
                        .map(|c| c.name().to_owned())
                }),
        }
    }
}

fn id_and_name(s: &str, digits: usize) -> Option<(u32, String)> {
    let id = s.get(..digits)?;
    let name = s.get(digits..)?.trim();
    Some((u32::from_str_radix(id, 16).ok()?, name.to_owned()))
}

/// One pass over the file, keeping the vendors and devices asked for and
/// every class.
fn parse(reader: impl BufRead, wanted: &BTreeSet<(u16, u16)>) -> FileNames {
    let vendors: BTreeSet<u16> = wanted.iter().map(|(v, _)| *v).collect();
    let mut out = FileNames::default();
    let mut vendor: Option<u16> = None;
    let mut class: Option<u8> = None;
    for line in reader.split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("C ") {
            vendor = None;
            class = id_and_name(rest, 2).map(|(c, name)| {
                out.classes.insert(c as u8, name);
                c as u8
            });
        } else if let Some(rest) = line.strip_prefix("\t\t") {
            let _ = rest; // subsystems and programming interfaces are not needed
        } else if let Some(rest) = line.strip_prefix('\t') {
            if let Some(c) = class {
                if let Some((sub, name)) = id_and_name(rest, 2) {
                    out.subclasses.insert((c, sub as u8), name);
                }
            } else if let Some(v) = vendor {
                if let Some((d, name)) = id_and_name(rest, 4) {
                    if wanted.contains(&(v, d as u16)) {
                        out.devices.insert((v, d as u16), name);
                    }
                }
            }
        } else if let Some((v, name)) = id_and_name(&line, 4) {
            class = None;
            let v = v as u16;
            vendor = vendors.contains(&v).then_some(v);
            if vendor.is_some() {
                out.vendors.insert(v, name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\n8086  Intel Corporation\n\t8cb1  9 Series Chipset Family USB xHCI Controller\n\t\t17aa 2214  ThinkPad\n10de  NVIDIA\n\t1234  Some GPU\nC 0c  Serial bus controller\n\t03  USB controller\n\t\t30  XHCI\nC 02  Network controller\n";

    #[test]
    fn file_names_only_for_wanted() {
        let wanted: BTreeSet<(u16, u16)> = [(0x8086, 0x8cb1)].into_iter().collect();
        let n = parse(SAMPLE.as_bytes(), &wanted);
        assert_eq!(n.vendors.get(&0x8086).map(String::as_str), Some("Intel Corporation"));
        assert_eq!(
            n.devices.get(&(0x8086, 0x8cb1)).map(String::as_str),
            Some("9 Series Chipset Family USB xHCI Controller")
        );
        assert!(!n.vendors.contains_key(&0x10de));
        assert_eq!(
            n.subclasses.get(&(0x0c, 0x03)).map(String::as_str),
            Some("USB controller")
        );
        assert_eq!(n.classes.get(&0x02).map(String::as_str), Some("Network controller"));
    }

    #[test]
    fn embedded_copy_knows_intel() {
        let n = PciNames(Source::Embedded);
        assert_eq!(n.vendor(0x8086).as_deref(), Some("Intel Corporation"));
        assert_eq!(n.class(0x0c, 0x03).as_deref(), Some("USB controller"));
        assert_eq!(n.class(0x02, 0x7f).as_deref(), Some("Network controller"));
    }
}
