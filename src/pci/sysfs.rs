//! Reading PCI devices from a sysfs tree (`/sys` or a test copy).
//!
//! Only names that passed [`Sbdf::parse`] are ever joined onto the root, so
//! nothing a caller sends can point outside it.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use qubes_pci_rpc::{DeviceId, PathHop, PciPath, Sbdf};

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("cannot list {path}: {source} (is --sysfs pointing at a sysfs tree?)")]
    List { path: PathBuf, source: std::io::Error },
}

/// What the kernel says about resetting a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reset {
    /// `reset_method` lists these, in priority order (`flr`, `bus`, …).
    Methods(Vec<String>),
    /// A `reset` file but no `reset_method` (kernel older than 5.15).
    Unlisted,
    /// Neither: the kernel knows no way to reset this function.
    None,
}

impl Reset {
    /// The `_reset_method` value shown in `Available`.
    pub fn describe(&self) -> String {
        match self {
            Reset::Methods(m) => m.join(" "),
            Reset::Unlisted => "unknown".to_owned(),
            Reset::None => "none".to_owned(),
        }
    }
}

/// One PCI function as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    pub sbdf: Sbdf,
    pub port: PciPath,
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    /// 24-bit class code: class, subclass, programming interface.
    pub class: Option<u32>,
    pub subsystem: Option<(u16, u16)>,
    pub revision: Option<u8>,
    pub driver: Option<String>,
    pub reset: Reset,
    /// Attributes that exist but could not be read or parsed.
    pub problems: Vec<String>,
}

impl PciDevice {
    /// The device id the API shows (`0x8086:0x8cb1::p0c0330`); unreadable
    /// ids are `0x0000`, an unreadable class the unknown interface.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::pci(
            self.vendor.unwrap_or_default(),
            self.device.unwrap_or_default(),
            self.class,
        )
    }

    /// What kind of bridge this is, for messages; `None` for an endpoint.
    /// Every bridge class (0x06xx) counts: host, ISA, EISA, PCI, CardBus
    /// and other bridges all carry or decode what dom0 needs, so they stay
    /// in dom0.
    pub fn bridge_kind(&self) -> Option<&'static str> {
        let class = self.class? >> 8;
        if class >> 8 != 0x06 {
            return None;
        }
        Some(match class {
            0x0600 => "host bridge",
            0x0601 => "ISA bridge",
            0x0602 => "EISA bridge",
            0x0603 => "MicroChannel bridge",
            0x0604 | 0x0609 => "PCI bridge",
            0x0605 => "PCMCIA bridge",
            0x0606 => "NuBus bridge",
            0x0607 => "CardBus bridge",
            0x0608 => "RACEway bridge",
            0x060a => "InfiniBand-to-PCI host bridge",
            _ => "bridge",
        })
    }

    /// The kernel knows a way to reset it (`reset_method` lists one, or an
    /// older kernel has a `reset` file).
    pub fn can_reset(&self) -> bool {
        match &self.reset {
            Reset::Methods(m) => !m.is_empty(),
            Reset::Unlisted => true,
            Reset::None => false,
        }
    }

    /// Its interface as upstream names it: `p` and the class code, or
    /// `p******` when the class is unknown.
    pub fn interface(&self) -> qubes_pci_rpc::Interface {
        self.class.map_or_else(
            qubes_pci_rpc::Interface::pci_unknown,
            qubes_pci_rpc::Interface::pci_class,
        )
    }

    /// Any bridge (class 0x06xx), as `Available` marks it with `_bridge`.
    pub fn is_bridge(&self) -> bool {
        self.bridge_kind().is_some()
    }
}

/// Every PCI function, sorted by port id.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub devices: Vec<PciDevice>,
}

impl Inventory {
    pub fn by_port(&self, port: &PciPath) -> Option<&PciDevice> {
        self.devices.iter().find(|d| &d.port == port)
    }

    pub fn by_sbdf(&self, sbdf: &Sbdf) -> Option<&PciDevice> {
        self.devices.iter().find(|d| &d.sbdf == sbdf)
    }

    /// The other functions of the same physical device.
    pub fn siblings<'a>(&'a self, dev: &'a PciDevice) -> impl Iterator<Item = &'a PciDevice> + 'a {
        self.devices
            .iter()
            .filter(move |d| d.sbdf != dev.sbdf && d.sbdf.same_slot(&dev.sbdf))
    }

    /// Reads only the device at `port`, following the path's bridges by their
    /// `secondary_bus_number` (as upstream's `path_to_sbdf`). `None` when no
    /// device is there.
    pub fn scan_port(root: &Path, port: &PciPath) -> Result<Option<PciDevice>, SysfsError> {
        let roots = root_buses(root)?;
        let mut bridges = Bridges::default();
        let mut sbdf: Option<Sbdf> = None;
        for hop in port.hops() {
            let bus = match sbdf {
                None if roots.contains(&(port.segment, hop.bus)) => Some(hop.bus),
                None => None,
                Some(parent) => bridges
                    .secondary(root, &parent)
                    .and_then(|sec| sec.checked_add(hop.bus)),
            };
            let Some(next) = bus.and_then(|b| Sbdf::new(port.segment, b, hop.device, hop.function)) else {
                return Ok(None);
            };
            sbdf = Some(next);
        }
        let Some(sbdf) = sbdf else { return Ok(None) };
        if !device_dir(root, &sbdf).exists() {
            return Ok(None);
        }
        Ok(read_device(root, &roots, sbdf, &mut bridges)
            .ok()
            .filter(|d| &d.port == port))
    }

    /// Reads every device under `<root>/bus/pci/devices`.
    pub fn scan(root: &Path) -> Result<Inventory, SysfsError> {
        Inventory::scan_with(root)
    }

    fn scan_with(root: &Path) -> Result<Inventory, SysfsError> {
        let roots = root_buses(root)?;
        let dir = root.join("bus/pci/devices");
        let entries = std::fs::read_dir(&dir).map_err(|source| SysfsError::List {
            path: dir.clone(),
            source,
        })?;
        let mut devices = Vec::new();
        let mut bridges = Bridges::default();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(sbdf) = Sbdf::parse(name) else {
                tracing::warn!(
                    device = name,
                    "skipping PCI device with an unsupported address (5-digit segment?)"
                );
                continue;
            };
            if sbdf.to_string() != name {
                continue;
            }
            match read_device(root, &roots, sbdf, &mut bridges) {
                Ok(d) => devices.push(d),
                Err(why) => tracing::warn!(device = %sbdf, "skipping PCI device: {why}"),
            }
        }
        devices.sort_by_cached_key(|d| d.port.to_string());
        Ok(Inventory { devices })
    }
}

/// The port id qubesd holds for a port id stored in qubes.xml: qubesd
/// converts one written by R4.2 (a BDF such as `03_00.0`) to a PCI path
/// when it loads the file (`is_pci_path`, then `sbdf_to_path`, in
/// qubes/vm/__init__.py), while the file keeps the old form until qubesd
/// saves it again. The converter answers `None` when qubesd keeps an id as
/// it is: it is already a PCI path (its first hop is on a root bus), it is
/// no BDF, or nothing is at that address. The root buses are read once.
pub fn ports_as_qubesd_loads(root: &Path) -> impl Fn(&str) -> Option<PciPath> + '_ {
    let roots = root_buses(root).unwrap_or_default();
    move |id| port_as_qubesd_loads(root, &roots, id)
}

fn port_as_qubesd_loads(root: &Path, roots: &BTreeSet<(u16, u8)>, id: &str) -> Option<PciPath> {
    if let Ok(path) = PciPath::parse(id) {
        let first = path.root();
        if roots.contains(&(path.segment, first.bus)) {
            return None;
        }
    }
    let sbdf = parse_bdf(id)?;
    if roots.contains(&(sbdf.segment, sbdf.bus)) {
        return PciPath::new(sbdf.segment, vec![PathHop::new(sbdf.bus, sbdf.device, sbdf.function)?]);
    }
    let link = std::fs::read_link(device_dir(root, &sbdf)).ok()?;
    port_of(root, roots, sbdf, Some(&link), &mut Bridges::default()).ok()
}

/// upstream's `sbdf_to_path` pattern: `[pci_][SSSS(_|:)]BB(_|:)DD(.|_)F`,
/// lower-case hex.
fn parse_bdf(id: &str) -> Option<Sbdf> {
    fn hex(s: Option<&str>) -> Option<u32> {
        let s = s?;
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    }
    let s = id.strip_prefix("pci_").unwrap_or(id);
    let (segment, rest) = match (s.len(), s.get(4..5)) {
        (12, Some("_" | ":")) => (hex(s.get(..4))?, s.get(5..)?),
        (7, _) => (0, s),
        _ => return None,
    };
    let sep = |at: usize, ok: &[&str]| rest.get(at..at + 1).is_some_and(|c| ok.contains(&c));
    if !sep(2, &["_", ":"]) || !sep(5, &[".", "_"]) {
        return None;
    }
    Sbdf::new(
        u16::try_from(segment).ok()?,
        u8::try_from(hex(rest.get(..2))?).ok()?,
        u8::try_from(hex(rest.get(3..5))?).ok()?,
        u8::try_from(hex(rest.get(6..7))?).ok()?,
    )
}

/// `(segment, bus)` of each `pciSSSS:BB` entry under `<root>/devices`.
fn root_buses(root: &Path) -> Result<BTreeSet<(u16, u8)>, SysfsError> {
    let dir = root.join("devices");
    let entries = std::fs::read_dir(&dir).map_err(|source| SysfsError::List {
        path: dir.clone(),
        source,
    })?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_root_bus))
        .collect())
}

/// Parses `pciSSSS:BB`.
fn parse_root_bus(name: &str) -> Option<(u16, u8)> {
    let rest = name.strip_prefix("pci")?;
    let (seg, bus) = rest.split_once(':')?;
    if seg.len() != 4 || bus.len() != 2 {
        return None;
    }
    Some((u16::from_str_radix(seg, 16).ok()?, u8::from_str_radix(bus, 16).ok()?))
}

fn device_dir(root: &Path, sbdf: &Sbdf) -> PathBuf {
    root.join("bus/pci/devices").join(sbdf.to_string())
}

/// The secondary bus number of each bridge met during one scan, read once.
#[derive(Default)]
pub(crate) struct Bridges(std::collections::HashMap<Sbdf, Option<u8>>);

impl Bridges {
    /// The bridge's `secondary_bus_number`: from its config header (type 1,
    /// offset 0x19) when readable, else from the attribute.
    fn secondary(&mut self, root: &Path, bridge: &Sbdf) -> Option<u8> {
        *self.0.entry(*bridge).or_insert_with(|| {
            let dir = device_dir(root, bridge);
            match read_config(&dir) {
                Some(c) if c.header_type() == Some(1) => c.byte(0x19),
                _ => read_attr(&dir, "secondary_bus_number")
                    .ok()
                    .flatten()
                    .and_then(|s| s.parse::<u8>().ok()),
            }
        })
    }
}

/// The PCI path of `sbdf`: itself when it sits on a root bus, otherwise the
/// chain of bridges from the root bus (read from `link`, the target of its
/// `bus/pci/devices` link), each bus number taken relative to the parent
/// bridge's secondary bus number.
fn port_of(
    root: &Path,
    roots: &BTreeSet<(u16, u8)>,
    sbdf: Sbdf,
    link: Option<&Path>,
    bridges: &mut Bridges,
) -> Result<PciPath, String> {
    let hop = |s: &Sbdf, bus: u8| PathHop {
        bus,
        device: s.device,
        function: s.function,
    };
    if roots.contains(&(sbdf.segment, sbdf.bus)) {
        return PciPath::new(sbdf.segment, vec![hop(&sbdf, sbdf.bus)]).ok_or_else(|| "empty path".to_owned());
    }
    let link = link.ok_or_else(|| "readlink failed".to_owned())?;
    let link = link.to_string_lossy();
    let root_prefix = format!("pci{:04x}:", sbdf.segment);
    let mut parts = link.split('/').skip_while(|c| !c.starts_with(&root_prefix));
    parts
        .next()
        .ok_or_else(|| format!("link {link} does not lead to a root bus"))?;
    let chain: Vec<Sbdf> = parts.map_while(|c| Sbdf::parse(c).ok()).collect();
    if chain.last() != Some(&sbdf) {
        return Err(format!("link {link} does not end at {sbdf}"));
    }
    let mut hops = Vec::with_capacity(chain.len());
    let mut offset = 0u8;
    for (i, comp) in chain.iter().enumerate() {
        let bus = comp
            .bus
            .checked_sub(offset)
            .ok_or_else(|| format!("bus of {comp} is below its bridge's"))?;
        hops.push(hop(comp, bus));
        if i + 1 < chain.len() {
            offset = bridges
                .secondary(root, comp)
                .ok_or_else(|| format!("bridge {comp} has no readable secondary_bus_number"))?;
        }
    }
    PciPath::new(sbdf.segment, hops).ok_or_else(|| "empty path".to_owned())
}

/// The first 64 bytes of a function's configuration space (the header
/// every user may read).
struct Config([u8; 64]);

impl Config {
    fn byte(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    fn word(&self, at: usize) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte(at)?, self.byte(at + 1)?]))
    }
    fn header_type(&self) -> Option<u8> {
        self.byte(0x0e).map(|b| b & 0x7f)
    }
}

/// Reads `config` with one `read`; `None` when it is missing or shorter
/// than the header (then the separate attributes are read).
fn read_config(dir: &Path) -> Option<Config> {
    let mut buf = [0u8; 64];
    let mut f = std::fs::File::open(dir.join("config")).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(buf.get_mut(n..)?) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    (n == buf.len()).then_some(Config(buf))
}

/// Reads a small attribute; `Ok(None)` when it does not exist. sysfs hands
/// a whole attribute (at most a page) to the first `read`, so one call is
/// enough.
fn read_attr(dir: &Path, name: &str) -> std::io::Result<Option<String>> {
    let mut buf = [0u8; 4096];
    match std::fs::File::open(dir.join(name)).and_then(|mut f| f.read(&mut buf)) {
        Ok(n) => Ok(Some(
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default())
                .trim()
                .to_owned(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The device's real directory: the `bus/pci/devices` link resolved
/// lexically (sysfs directories are not links), so that each attribute
/// open does not walk the link again. The link path itself when unreadable.
fn real_dir_from(root: &Path, sbdf: &Sbdf, target: Option<&Path>) -> PathBuf {
    let link_dir = device_dir(root, sbdf);
    let Some(target) = target else {
        return link_dir;
    };
    let mut out = root.join("bus/pci/devices");
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => {
                if !out.pop() || !out.starts_with(root) {
                    return link_dir;
                }
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => return link_dir,
        }
    }
    if out.starts_with(root) {
        out
    } else {
        link_dir
    }
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

fn read_driver(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn read_reset(dir: &Path, problems: &mut Vec<String>) -> Reset {
    match read_attr(dir, "reset_method") {
        Ok(Some(m)) => Reset::Methods(m.split_whitespace().map(str::to_owned).collect()),
        Ok(None) if dir.join("reset").exists() => Reset::Unlisted,
        Ok(None) => Reset::None,
        Err(e) => {
            problems.push(format!("reset_method: {e}"));
            Reset::Unlisted
        }
    }
}

fn read_device(
    root: &Path,
    roots: &BTreeSet<(u16, u8)>,
    sbdf: Sbdf,
    bridges: &mut Bridges,
) -> Result<PciDevice, String> {
    // The link once: it gives both the path and the real directory.
    let link = std::fs::read_link(device_dir(root, &sbdf)).ok();
    let port = port_of(root, roots, sbdf, link.as_deref(), bridges)?;
    let dir = real_dir_from(root, &sbdf, link.as_deref());
    let mut problems = Vec::new();
    let mut hex = |name: &str, max: u32| -> Option<u32> {
        match read_attr(&dir, name) {
            Ok(Some(s)) => match parse_hex(&s).filter(|v| *v <= max) {
                Some(v) => Some(v),
                None => {
                    problems.push(format!("{name}: not a hex number"));
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                None
            }
        }
    };
    // One read of the config header gives the ids, class and revision
    // (and, for an ordinary function, the subsystem); the attribute files
    // are the fallback.
    let (vendor, device, class, revision, subsystem) = match read_config(&dir) {
        Some(c) => {
            let class = c
                .byte(0x09)
                .zip(c.word(0x0a))
                .map(|(pi, cs)| u32::from(cs) << 8 | u32::from(pi));
            let subsystem = match c.header_type() {
                Some(0) => c.word(0x2c).zip(c.word(0x2e)),
                // Bridges keep it in a capability: the attributes say it.
                _ => match (hex("subsystem_vendor", 0xffff), hex("subsystem_device", 0xffff)) {
                    (Some(v), Some(d)) => Some((v as u16, d as u16)),
                    _ => None,
                },
            };
            (c.word(0), c.word(2), class, c.byte(0x08), subsystem)
        }
        None => {
            let vendor = hex("vendor", 0xffff).map(|v| v as u16);
            let device = hex("device", 0xffff).map(|v| v as u16);
            let class = hex("class", 0xff_ffff);
            let subsystem = match (hex("subsystem_vendor", 0xffff), hex("subsystem_device", 0xffff)) {
                (Some(v), Some(d)) => Some((v as u16, d as u16)),
                _ => None,
            };
            let revision = hex("revision", 0xff).map(|v| v as u8);
            (vendor, device, class, revision, subsystem)
        }
    };
    let driver = read_driver(&dir);
    let reset = read_reset(&dir, &mut problems);
    Ok(PciDevice {
        sbdf,
        port,
        vendor,
        device,
        class,
        subsystem,
        revision,
        driver,
        reset,
        problems,
    })
}
