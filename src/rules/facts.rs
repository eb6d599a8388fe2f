//! What a decision is made on: one typed value, gathered by each path from
//! where it reads the truth (the front door from sysfs, qubes.xml and
//! qubesd; the extension from qubesd's memory), never by the rules.

use qubes_pci_rpc::{PciOptions, PciPath, QubeName};

use super::Record;
use crate::pci::dom0_use::Dom0Use;
use crate::pci::PciDevice;

/// A qube's `virt_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtMode {
    Hvm,
    Pv,
    Pvh,
}

impl VirtMode {
    pub fn parse(untrusted: &str) -> Option<VirtMode> {
        match untrusted {
            "hvm" => Some(VirtMode::Hvm),
            "pv" => Some(VirtMode::Pv),
            "pvh" => Some(VirtMode::Pvh),
            _ => None,
        }
    }
}

/// A property's value and whether it was set on the qube itself. qubesd
/// computes a default when it was not (`admin.vm.property.Get` says
/// `default=True`): `virt_mode` defaults to pvh until the qube has its
/// first PCI assignment, and to hvm after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub explicit: bool,
}

/// The qube a call acts on (for a start: the qube starting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub name: QubeName,
    /// dom0 (qubesd's class `AdminVM`).
    pub admin_vm: bool,
    /// `None` when the path does not need it (reads, unassign).
    pub virt_mode: Option<Setting<VirtMode>>,
    pub running: bool,
    /// Ports of the PCI devices it holds now (running qubes only).
    pub attached: Vec<PciPath>,
    /// `maxmem` is set: memory balancing, which a qube with PCI devices
    /// cannot use.
    pub memory_balancing: bool,
    /// `memory` and `maxmem` in MiB, when known.
    pub memory_mb: Option<u64>,
    pub maxmem_mb: Option<u64>,
    /// `devices_denied` as qubesd holds it: 7-character interface patterns
    /// run together (`p02****u03****`), `*` matching any character.
    pub devices_denied: String,
}

impl Dest {
    /// A qube known by name only, halted, nothing else known.
    pub fn named(name: QubeName) -> Dest {
        Dest {
            admin_vm: name.is_dom0(),
            name,
            virt_mode: None,
            running: false,
            attached: Vec::new(),
            memory_balancing: false,
            memory_mb: None,
            maxmem_mb: None,
            devices_denied: String::new(),
        }
    }

    /// The `devices_denied` pattern the interface matches, if any (as
    /// upstream's `DeviceInterface.matches`: same length, `*` matches any
    /// character). An unknown interface (`p******`) can match no pattern
    /// but `*`s, so with any pattern set it is taken as denied: what cannot
    /// be checked against the list is refused, as upstream does.
    pub fn denied_by(&self, interface: &str) -> Option<&str> {
        let patterns = self.devices_denied.as_bytes().chunks(7);
        let unknown = interface.get(1..).is_some_and(|c| c.bytes().all(|b| b == b'*'));
        patterns.filter_map(|p| std::str::from_utf8(p).ok()).find(|p| {
            unknown
                || (p.len() == interface.len() && p.bytes().zip(interface.bytes()).all(|(a, b)| a == b'*' || a == b))
        })
    }
}

/// What dom0's kernel command line hides from dom0's drivers at boot
/// (`rd.qubes.hide_pci=`, plus the network controllers, and the USB
/// controllers with `rd.qubes.hide_all_usb`, less `rd.qubes.dom0_usb=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hidden {
    pub sbdfs: std::collections::BTreeSet<qubes_pci_rpc::Sbdf>,
}

/// A PCI function present in dom0 and what dom0 itself uses it for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Present {
    pub device: PciDevice,
    pub dom0_uses: Vec<Dom0Use>,
}

/// Everything one decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The calling qube (`dom0` for dom0's own tools).
    pub source: QubeName,
    pub dest: Dest,
    /// The devices present at the ports the decision concerns (a port
    /// without an entry has no device).
    pub present: Vec<Present>,
    /// Every qube's PCI assignments, as qubesd holds them.
    pub assignments: Vec<Record>,
    /// The devices other running qubes hold, each with its assignment's
    /// options.
    pub running: Vec<Record>,
    /// The options dom0's policy lets the source turn on for the
    /// destination (`admin.vm.device.pci.Option+NAME`); all for dom0.
    pub grants: PciOptions,
    /// What dom0's kernel hides at boot; `None` when not read.
    pub hidden: Option<Hidden>,
}

impl Facts {
    /// The device at `port`, if one is present.
    pub fn at(&self, port: &PciPath) -> Option<&Present> {
        self.present.iter().find(|p| &p.device.port == port)
    }

    /// The call comes from dom0's own tools.
    pub fn from_dom0(&self) -> bool {
        self.source.is_dom0()
    }
}
