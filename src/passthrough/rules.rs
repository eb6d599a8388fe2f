//! The PCI passthrough rules checked when a device is assigned, shared by
//! the Assign method, `assign-defaults` and `import-qubes-xml`.

use qubes_pci_rpc::{DeviceId, PciPath, Wild};

use crate::error::ApiError;
use crate::pci::PciDevice;
use crate::store::{Record, State};
use crate::sysinfo::DomainInfo;

/// The qube can take PCI devices: it exists (the caller resolved it), is
/// not dom0 and does not run in pvh mode.
pub fn check_qube(qube: &str, info: Option<&DomainInfo>, device: &str) -> Result<(), ApiError> {
    if qube == "dom0" || info.and_then(|i| i.klass.as_deref()) == Some("AdminVM") {
        return Err(ApiError::Qubes(format!(
            "cannot assign PCI device {device} to dom0: dom0 already has every device it has not given away; \
             assign it to a qube instead"
        )));
    }
    if info.and_then(|i| i.virt_mode.as_deref()) == Some("pvh") {
        return Err(ApiError::Qubes(format!(
            "cannot assign PCI device {device} to {qube}: {qube} runs in pvh mode, which has no PCI passthrough; \
             run `qvm-prefs {qube} virt_mode hvm` first, then assign again"
        )));
    }
    Ok(())
}

/// The device is present in dom0 with the given identity and is not a
/// bridge. Returns the live device.
pub fn check_device<'a>(
    at_port: Option<&'a PciDevice>,
    port: &PciPath,
    device_id: &Wild<DeviceId>,
    qube: &str,
) -> Result<&'a PciDevice, ApiError> {
    let Some(dev) = at_port else {
        return Err(ApiError::DeviceNotFound(format!(
            "there is no PCI device at port {port} in dom0, so it cannot be assigned to {qube}; \
             `qvm-pci` (admin.vm.device.pci.Available) lists the devices present \
             (an assignment whose device is gone can still be unassigned)"
        )));
    };
    let live = dev.device_id();
    if !device_id.matches(&live) {
        return Err(ApiError::DeviceNotFound(format!(
            "the device at port {port} ({}) is {live}, not {device_id}: the hardware changed or the port id is wrong; \
             nothing was assigned to {qube}. Check `qvm-pci` and assign the device you mean",
            dev.sbdf
        )));
    }
    if let Some(kind) = dev.bridge_kind() {
        return Err(ApiError::Value(format!(
            "dom0:{port} ({}) is a {kind}; bridges carry other devices and stay in dom0, so it cannot be assigned \
             to {qube}. Assign the device behind it instead",
            dev.sbdf
        )));
    }
    Ok(dev)
}

/// The functions of one multi-function device go to one qube, unless every
/// assignment involved carries `no-strict-reset`.
pub fn check_siblings(state: &State, new: &Record) -> Result<(), ApiError> {
    let clash = state.assignments.iter().find(|r| {
        r.frontend != new.frontend
            && r.port.is_sibling(&new.port)
            && !(r.options.no_strict_reset && new.options.no_strict_reset)
    });
    match clash {
        None => Ok(()),
        Some(r) => Err(ApiError::Value(format!(
            "cannot assign PCI device {} to {}: it is a function of the same physical device as {}, which is \
             assigned to {}, and the functions of one device share its reset. Assign all functions to one qube \
             (`qvm-pci unassign {} dom0:{}`, then assign it to {}), or, if you accept that a reset of one qube's \
             function may disturb the other, give both assignments -o no-strict-reset=True",
            new.device_name(),
            new.frontend,
            r.device_name(),
            r.frontend,
            r.frontend,
            r.port,
            new.frontend,
        ))),
    }
}

/// Other qubes the same device is assigned to (allowed: only one of them
/// may run at a time, which `prepare-start` enforces).
pub fn also_assigned<'a>(state: &'a State, new: &'a Record) -> impl Iterator<Item = &'a Record> + 'a {
    state
        .assignments
        .iter()
        .filter(move |r| r.frontend != new.frontend && r.port == new.port)
}
