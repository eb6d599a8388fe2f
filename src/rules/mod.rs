//! The PCI passthrough rules: one typed set of [`Facts`] and one pure
//! [`decide`], used by every path (the front door, the dom0 commands, the
//! qubesd extension). Nothing here reads sysfs, qubes.xml, qubesd or the
//! policy, and nothing here imports from the request path.

pub mod decide;
pub mod facts;
pub mod record;

pub use decide::{decide, start_problems, Decision, Kind, Plan, Problem, Severity, OPTION_SERVICE};
pub use facts::{Dest, Facts, Present, Setting, VirtMode};
pub use record::{Record, RecordError};

use crate::pci::PciDevice;

/// Network controllers (base class 0x02): the installer gives them to
/// sys-net.
pub fn is_network(d: &PciDevice) -> bool {
    d.class.is_some_and(|c| c >> 16 == 0x02)
}

/// USB controllers (class 0x0c, subclass 0x03): the installer gives them
/// to sys-usb.
pub fn is_usb(d: &PciDevice) -> bool {
    d.class.is_some_and(|c| c >> 8 == 0x0c03)
}

#[cfg(test)]
mod tests;
