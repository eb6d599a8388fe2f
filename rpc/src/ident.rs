//! Validated identifiers: PCI addresses (SBDF), PCI paths (`port_id`),
//! device ids, interfaces and qube names.
//!
//! Every type here is built only by a validating `parse`, so a value of the
//! type is known to be well-formed and safe to put into a filesystem path.

use std::fmt;

use crate::DecodeError;

fn hex_digits(s: &str, n: usize) -> Option<u32> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// A PCI address: segment, bus, device (slot) and function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Sbdf {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Sbdf {
    /// Builds an address, checking the device (< 0x20) and function (< 8) ranges.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Option<Sbdf> {
        (device < 0x20 && function < 8).then_some(Sbdf {
            segment,
            bus,
            device,
            function,
        })
    }

    /// Parses `SSSS:BB:DD.F` or `BB:DD.F` (lower-case hex; `_` may replace `:`).
    pub fn parse(untrusted: &str) -> Result<Sbdf, DecodeError> {
        let bad = || DecodeError::InvalidSbdf(untrusted.to_owned());
        let s = untrusted.replace('_', ":");
        let parts: Vec<&str> = s.split(':').collect();
        let (seg, bus, devfn) = match parts.as_slice() {
            [seg, bus, devfn] => (hex_digits(seg, 4).ok_or_else(bad)?, *bus, *devfn),
            [bus, devfn] => (0, *bus, *devfn),
            _ => return Err(bad()),
        };
        let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
        let bus = hex_digits(bus, 2).ok_or_else(bad)?;
        let dev = hex_digits(dev, 2).ok_or_else(bad)?;
        let func = hex_digits(func, 1).ok_or_else(bad)?;
        Sbdf::new(seg as u16, bus as u8, dev as u8, func as u8).ok_or_else(bad)
    }

    /// True when `other` is another function of the same physical device.
    pub fn same_slot(&self, other: &Sbdf) -> bool {
        self.segment == other.segment && self.bus == other.bus && self.device == other.device
    }
}

impl fmt::Display for Sbdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// One hop of a PCI path: bus (relative to the parent bridge's secondary bus,
/// absolute for the first hop), device and function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PathHop {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PathHop {
    /// A hop with the device (< 0x20) and function (< 8) ranges checked.
    pub fn new(bus: u8, device: u8, function: u8) -> Option<PathHop> {
        (device < 0x20 && function < 8).then_some(PathHop { bus, device, function })
    }
}

/// A PCI path, Qubes' stable `port_id` for PCI devices, such as `00_14.0`,
/// `00_08.1-00_00.0` or `0001_00_02.0`: the root-port device (segment
/// omitted when `0000`) followed by each hop behind a bridge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PciPath {
    pub segment: u16,
    /// Never empty.
    hops: Vec<PathHop>,
}

impl PciPath {
    /// Builds a path from its hops; `None` when `hops` is empty.
    pub fn new(segment: u16, hops: Vec<PathHop>) -> Option<PciPath> {
        (!hops.is_empty()).then_some(PciPath { segment, hops })
    }

    pub fn hops(&self) -> &[PathHop] {
        &self.hops
    }

    /// The first hop (on the root bus).
    pub fn root(&self) -> PathHop {
        // `hops` is never empty by construction.
        self.hops.first().copied().unwrap_or(PathHop {
            bus: 0,
            device: 0,
            function: 0,
        })
    }

    /// True when `other` is another function of the same physical device:
    /// the same bridge chain and slot, a different function.
    pub fn is_sibling(&self, other: &PciPath) -> bool {
        let (Some((a, a_up)), Some((b, b_up))) = (self.hops.split_last(), other.hops.split_last()) else {
            return false;
        };
        self.segment == other.segment
            && a_up == b_up
            && a.bus == b.bus
            && a.device == b.device
            && a.function != b.function
    }

    /// Parses a PCI path. Lower-case hex only, device < 0x20, function < 8.
    pub fn parse(untrusted: &str) -> Result<PciPath, DecodeError> {
        let bad = || DecodeError::InvalidPortId(untrusted.to_owned());
        if untrusted.len() > 200 {
            return Err(bad());
        }
        let mut segment = 0u16;
        let mut hops = Vec::new();
        for (i, part) in untrusted.split('-').enumerate() {
            let part = if i == 0 && part.len() == 12 {
                let (seg, rest) = part.split_at_checked(5).ok_or_else(bad)?;
                let seg = seg.strip_suffix('_').ok_or_else(bad)?;
                segment = hex_digits(seg, 4).ok_or_else(bad)? as u16;
                rest
            } else {
                part
            };
            let (bus, devfn) = part.split_once('_').ok_or_else(bad)?;
            let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
            let bus = hex_digits(bus, 2).ok_or_else(bad)? as u8;
            let device = hex_digits(dev, 2).ok_or_else(bad)? as u8;
            let function = hex_digits(func, 1).ok_or_else(bad)? as u8;
            if device >= 0x20 || function >= 8 {
                return Err(bad());
            }
            hops.push(PathHop { bus, device, function });
        }
        PciPath::new(segment, hops).ok_or_else(bad)
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segment != 0 {
            write!(f, "{:04x}_", self.segment)?;
        }
        for (i, h) in self.hops.iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(f, "{:02x}_{:02x}.{:x}", h.bus, h.device, h.function)?;
        }
        Ok(())
    }
}

/// A device interface code: 7 characters, devclass letter (or `?`) then
/// class, subclass and programming interface in hex, `*` as wildcard
/// (`p0c0330`, `p******`, `?******`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Interface(String);

impl Interface {
    pub fn parse(untrusted: &str) -> Result<Interface, DecodeError> {
        let bad = || DecodeError::InvalidInterface(untrusted.to_owned());
        let mut bytes = untrusted.bytes();
        let first = bytes.next().ok_or_else(bad)?;
        // The first character is a class letter or `?` (unknown), never
        // `*`: in the qrexec-argument form both `?` and `*` become `_`, and
        // only `?` may stand first, so each value has one encoding.
        if untrusted.len() != 7
            || !matches!(first, b'p' | b'u' | b'b' | b'm' | b'?')
            || !bytes.all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'*')
        {
            return Err(bad());
        }
        Ok(Interface(untrusted.to_owned()))
    }

    /// The PCI interface of a 24-bit class code, `p` + 6 hex digits.
    pub fn pci_class(class: u32) -> Interface {
        Interface(format!("p{:06x}", class & 0xff_ffff))
    }

    /// The PCI interface when the class is unknown.
    pub fn pci_unknown() -> Interface {
        Interface("p******".to_owned())
    }

    /// Splits a concatenation of 7-character codes.
    pub fn parse_bulk(untrusted: &str) -> Result<Vec<Interface>, DecodeError> {
        if !untrusted.len().is_multiple_of(7) || !untrusted.is_ascii() {
            return Err(DecodeError::InvalidInterface(untrusted.to_owned()));
        }
        let chars: Vec<char> = untrusted.chars().collect();
        chars
            .chunks(7)
            .map(|c| Interface::parse(&c.iter().collect::<String>()))
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device id `vendor:product:serial:interfaces`, for PCI
/// `0x8086:0x8cb1::p0c0330`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeviceId {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub interfaces: Vec<Interface>,
}

fn id_part_ok(s: &str) -> bool {
    s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl DeviceId {
    /// The id of a PCI function as libvirt spells it (`0x` prefixed ids).
    pub fn pci(vendor: u16, product: u16, class: Option<u32>) -> DeviceId {
        DeviceId {
            vendor: format!("0x{vendor:04x}"),
            product: format!("0x{product:04x}"),
            serial: String::new(),
            interfaces: vec![class.map_or_else(Interface::pci_unknown, Interface::pci_class)],
        }
    }

    pub fn parse(untrusted: &str) -> Result<DeviceId, DecodeError> {
        let bad = || DecodeError::InvalidDeviceId(untrusted.to_owned());
        let mut parts = untrusted.splitn(4, ':');
        let (Some(vendor), Some(product), Some(serial), Some(ifaces)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !id_part_ok(vendor) || !id_part_ok(product) || !id_part_ok(serial) || ifaces.len() > 7 * 32 {
            return Err(bad());
        }
        let interfaces = Interface::parse_bulk(ifaces).map_err(|_| bad())?;
        Ok(DeviceId {
            vendor: vendor.to_owned(),
            product: product.to_owned(),
            serial: serial.to_owned(),
            interfaces,
        })
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:", self.vendor, self.product, self.serial)?;
        for i in &self.interfaces {
            f.write_str(i.as_str())?;
        }
        Ok(())
    }
}

/// A qube name as qubesd accepts it: at most 31 characters,
/// `^[a-zA-Z][a-zA-Z0-9_.-]*$`, not `none`, `default` or `Domain-0`, not
/// ending in `-dm`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct QubeName(String);

impl QubeName {
    pub fn parse(untrusted: &str) -> Result<QubeName, DecodeError> {
        let bad = || DecodeError::InvalidQubeName(untrusted.to_owned());
        let mut bytes = untrusted.bytes();
        let first = bytes.next().ok_or_else(bad)?;
        if untrusted.len() > 31
            || !first.is_ascii_alphabetic()
            || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            || matches!(untrusted, "none" | "default" | "Domain-0")
            || untrusted.ends_with("-dm")
        {
            return Err(bad());
        }
        Ok(QubeName(untrusted.to_owned()))
    }

    pub fn dom0() -> QubeName {
        QubeName("dom0".to_owned())
    }

    pub fn is_dom0(&self) -> bool {
        self.0 == "dom0"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QubeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A qube as a request names it: by name, or by `uuid:<uuid>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QubeRef {
    Name(QubeName),
    Uuid(String),
}

impl QubeRef {
    pub fn parse(untrusted: &str) -> Result<QubeRef, DecodeError> {
        if let Some(uuid) = untrusted.strip_prefix("uuid:") {
            let ok = uuid.len() == 36
                && uuid.bytes().enumerate().all(|(i, b)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        b == b'-'
                    } else {
                        b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                    }
                });
            return if ok {
                Ok(QubeRef::Uuid(uuid.to_owned()))
            } else {
                Err(DecodeError::InvalidQubeName(untrusted.to_owned()))
            };
        }
        QubeName::parse(untrusted).map(QubeRef::Name)
    }
}

impl fmt::Display for QubeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QubeRef::Name(n) => n.fmt(f),
            QubeRef::Uuid(u) => write!(f, "uuid:{u}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_share_chain_and_slot() {
        let p = |s: &str| PciPath::parse(s).unwrap();
        assert!(p("00_1f.0").is_sibling(&p("00_1f.6")));
        assert!(p("00_1c.0-00_00.0").is_sibling(&p("00_1c.0-00_00.1")));
        assert!(!p("00_1f.6").is_sibling(&p("00_1f.6")));
        assert!(!p("00_1f.0").is_sibling(&p("00_1e.0")));
        assert!(!p("00_1c.0-00_00.0").is_sibling(&p("00_1c.1-00_00.1")));
        assert!(!p("00_1c.0-00_00.0").is_sibling(&p("00_00.1")));
        assert!(!p("00_14.0").is_sibling(&p("0001_00_14.1")));
    }

    #[test]
    fn sbdf_forms() {
        let a = Sbdf::parse("0000:00:14.0").unwrap();
        assert_eq!(a, Sbdf::parse("00:14.0").unwrap());
        assert_eq!(a, Sbdf::parse("0000_00_14.0").unwrap());
        assert_eq!(a.to_string(), "0000:00:14.0");
        assert!(Sbdf::parse("0000:00:20.0").is_err());
        assert!(Sbdf::parse("0000:00:1f.8").is_err());
        assert!(Sbdf::parse("10000:00:14.0").is_err());
        assert!(Sbdf::parse("0000:00:14").is_err());
        assert!(Sbdf::parse("../../etc").is_err());
        assert!(Sbdf::parse("0000:0G:14.0").is_err());
    }

    #[test]
    fn path_forms() {
        for p in [
            "00_14.0",
            "00_08.1-00_00.0",
            "c0_03.5-00_00.0-00_00.0",
            "0001_00_02.0",
            "0001_00_02.0-01_00.7",
        ] {
            assert_eq!(PciPath::parse(p).unwrap().to_string(), p);
        }
        for p in [
            "",
            "00_14",
            "00_14.8",
            "00_20.0",
            "00_14.0-",
            "-00_14.0",
            "0000_00_14.0x",
            "00:14.0",
            "00_14.0/..",
            "../00_14.0",
            "00_14.0-0000_00_00.0",
            "00_1G.0",
            "00_14.0 ",
        ] {
            assert!(PciPath::parse(p).is_err(), "{p:?} accepted");
        }
        // The `0000_` segment prefix is accepted on input and dropped on output.
        assert_eq!(PciPath::parse("0000_00_14.0").unwrap().to_string(), "00_14.0");
    }

    #[test]
    fn device_ids() {
        let d = DeviceId::parse("0x8086:0x8cb1::p0c0330").unwrap();
        assert_eq!(d, DeviceId::pci(0x8086, 0x8cb1, Some(0x0c0330)));
        assert_eq!(d.to_string(), "0x8086:0x8cb1::p0c0330");
        assert_eq!(
            DeviceId::parse("0000:0000::?******").unwrap().to_string(),
            "0000:0000::?******"
        );
        assert!(DeviceId::parse("0x8086:0x8cb1:p0c0330").is_err());
        assert!(DeviceId::parse("0x8086:0x8cb1::p0c033").is_err());
        assert!(DeviceId::parse("0x80/6:0x8cb1::p0c0330").is_err());
    }

    #[test]
    fn qube_names() {
        assert!(QubeName::parse("sys-net").is_ok());
        assert!(QubeName::parse("dom0").is_ok());
        for n in [
            "",
            "1abc",
            "a b",
            "none",
            "default",
            "Domain-0",
            "x-dm",
            "a/b",
            &"a".repeat(32),
        ] {
            assert!(QubeName::parse(n).is_err(), "{n:?}");
        }
        assert!(matches!(
            QubeRef::parse("uuid:00000000-0000-0000-0000-000000000000"),
            Ok(QubeRef::Uuid(_))
        ));
        assert!(QubeRef::parse("uuid:0000").is_err());
    }
}
