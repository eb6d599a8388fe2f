//! `admin.vm.device.pci.Available`: dom0's PCI devices.

use qubes_pci_rpc::{DeviceInfo, PciPath, QubeName};

use super::{Arg, Call, Output, Service};
use crate::error::ApiError;
use crate::pci::{Inventory, PciDevice, PciNames};

pub(super) fn handle(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let filter = match &call.arg {
        Arg::Port(p) => Some(p),
        _ => None,
    };
    // Only dom0 exposes PCI devices.
    if !call.dest.is_dom0() {
        return Ok(Output::Devices(Vec::new()));
    }
    let Some(port) = filter else {
        return Ok(Output::Rendered(svc.sources.available_rendered()?));
    };
    let inventory = svc.sources.inventory()?;
    let names = svc.sources.pci_names_for(&inventory);
    Ok(Output::Devices(device_infos(&inventory, &names, Some(port))))
}

/// The `Available` view of the inventory, optionally of one port.
pub fn device_infos(inventory: &Inventory, names: &PciNames, port: Option<&PciPath>) -> Vec<DeviceInfo> {
    inventory
        .devices
        .iter()
        .filter(|d| port.is_none_or(|p| &d.port == p))
        .map(|d| describe(inventory, d, names))
        .collect()
}

/// One device as `Available` lists it, with the extra `_` keys a GUI or a
/// script needs to warn before a start fails.
pub fn describe(inventory: &Inventory, dev: &PciDevice, names: &PciNames) -> DeviceInfo {
    let device_id = dev.device_id();
    let vendor = dev.vendor.and_then(|v| names.vendor(v));
    let product = dev.vendor.zip(dev.device).and_then(|(v, d)| names.device(v, d));
    let mut data = vec![("sbdf".to_owned(), dev.sbdf.to_string())];
    if let Some(class) = dev.class {
        if let Some(name) = names.class((class >> 16) as u8, (class >> 8) as u8) {
            data.push(("class_name".to_owned(), name));
        }
    }
    if let Some(driver) = &dev.driver {
        data.push(("driver".to_owned(), driver.clone()));
    }
    data.push(("reset_method".to_owned(), dev.reset.describe()));
    let siblings: Vec<String> = inventory.siblings(dev).map(|s| s.port.to_string()).collect();
    if !siblings.is_empty() {
        data.push(("functions".to_owned(), siblings.join(" ")));
    }
    if dev.is_bridge() {
        data.push(("bridge".to_owned(), "True".to_owned()));
    }
    if let Some((v, d)) = dev.subsystem {
        data.push(("subsystem".to_owned(), format!("0x{v:04x}:0x{d:04x}")));
    }
    if let Some(r) = dev.revision {
        data.push(("revision".to_owned(), format!("0x{r:02x}")));
    }
    if !dev.problems.is_empty() {
        data.push(("unreadable".to_owned(), dev.problems.join("; ")));
    }
    DeviceInfo {
        backend: QubeName::dom0(),
        port: dev.port.clone(),
        device_id,
        vendor,
        product,
        data,
    }
}
