//! dom0's PCI devices: the sysfs inventory, PCI paths and pci.ids names.

pub mod dom0_use;
pub mod hide;
pub mod names;
pub mod sysfs;

pub use names::PciNames;
pub use sysfs::{Inventory, PciDevice, Reset, SysfsError};
