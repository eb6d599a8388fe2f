//! The PCI passthrough rules, on facts: the destination qube, the device
//! at the port, every qube's assignments, the running qubes' devices.
//! Nothing here reads qubesd or qubes.xml; callers pass what they know.

use qubes_pci_rpc::{AssignmentMode, DeviceId, PciOptions, PciPath, Wild};

use std::collections::BTreeMap;

use qubes_pci_rpc::Sbdf;

use super::Record;
use crate::error::ApiError;
use crate::pci::dom0_use::Dom0Use;
use crate::pci::{Inventory, PciDevice};

/// What dom0 itself uses (see [`crate::pci::dom0_use`]), and whether the
/// call comes from dom0.
#[derive(Clone, Debug, Default)]
pub struct Dom0Uses {
    pub uses: BTreeMap<Sbdf, Vec<Dom0Use>>,
    pub from_dom0: bool,
}

/// What the destination of an assignment is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dest<'a> {
    pub name: &'a str,
    /// qubesd's class (`AppVM`, `AdminVM`, …), when known.
    pub class: Option<&'a str>,
    /// `hvm`, `pv` or `pvh`, when known.
    pub virt_mode: Option<&'a str>,
}

/// How an Assign relates to what the destination already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No assignment of this device (same port and device id) yet.
    New,
    /// The same assignment exists: qubesd answers `DeviceAlreadyAssigned`.
    Identical,
    /// Same options, another mode: one `Set.assignment`.
    Mode { before: Record },
    /// Other options: qubesd has no call to change them, so the old
    /// assignment is replaced (and restored if the new one fails).
    Replace { before: Record },
}

/// PCI devices reach a qube only when it starts, and qubesd hands a qube
/// only its `required` PCI assignments: any other mode would be recorded
/// and never take effect.
pub fn check_mode(mode: AssignmentMode, qube: &str, device: &str) -> Result<(), ApiError> {
    if mode == AssignmentMode::Required {
        return Ok(());
    }
    Err(ApiError::Value(format!(
        "PCI device {device} cannot be assigned to {qube} in mode {mode}: PCI devices reach a qube only when it \
         starts, and only as required. Assign it as required (`qvm-pci assign --required {qube} {}`)",
        short(device)
    )))
}

/// `dom0:PORT`, as `qvm-pci` takes a device.
fn short(device: &str) -> String {
    device.splitn(3, ':').take(2).collect::<Vec<_>>().join(":")
}

/// The qube can take PCI devices: it is not dom0 and does not run in pvh
/// mode.
pub fn check_qube(dest: &Dest, device: &str) -> Result<(), ApiError> {
    let qube = dest.name;
    if qube == "dom0" || dest.class == Some("AdminVM") {
        return Err(ApiError::Qubes(format!(
            "cannot assign PCI device {device} to dom0: dom0 already has every device it has not given away; \
             assign it to a qube instead"
        )));
    }
    if dest.virt_mode == Some("pvh") {
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
             `qvm-pci` lists the devices present (an assignment whose device is gone can still be unassigned)"
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

/// A device dom0 is using is never given away at a qube's request (its root
/// disk handed to a qube is a full compromise); a dom0 administrator may
/// still do it, with a warning in the journal.
pub fn check_dom0_use(dom0: &Dom0Uses, dev: &PciDevice, qube: &str) -> Result<(), ApiError> {
    let Some(uses) = dom0.uses.get(&dev.sbdf).filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let why: Vec<&str> = uses.iter().map(|u| u.what).collect();
    let detail: Vec<&str> = uses
        .iter()
        .map(|u| u.detail.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    if dom0.from_dom0 {
        tracing::warn!(
            device = %dev.port,
            sbdf = %dev.sbdf,
            qube,
            detail = detail.join("; "),
            "dom0 assigns a PCI device dom0 itself uses ({}); it leaves dom0 when {qube} starts",
            why.join("; ")
        );
        return Ok(());
    }
    tracing::warn!(device = %dev.port, sbdf = %dev.sbdf, qube, detail = detail.join("; "), "refused: dom0 uses this device");
    Err(ApiError::Value(format!(
        "dom0:{} ({}) cannot be assigned to {qube} at a qube's request: dom0 itself uses it ({}), and it would \
         leave dom0 when {qube} starts. A dom0 administrator who means it can assign it from dom0 \
         (`qvm-pci assign --required {qube} dom0:{}`)",
        dev.port,
        dev.sbdf,
        why.join("; "),
        dev.port
    )))
}

/// The functions of one multi-function device go to one qube, unless every
/// assignment involved carries `no-strict-reset`.
pub fn check_siblings(assigned: &[Record], new: &Record) -> Result<(), ApiError> {
    let clash = assigned.iter().find(|r| {
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
/// may run at a time, which the start check enforces).
pub fn also_assigned<'a>(assigned: &'a [Record], new: &'a Record) -> impl Iterator<Item = &'a Record> + 'a {
    assigned
        .iter()
        .filter(move |r| r.frontend != new.frontend && r.port == new.port)
}

/// Every rule of an Assign of `new` to `dest`, given every qube's
/// assignments, the device at the port and what dom0 uses. `grant` is asked for every
/// option the call turns on that the existing assignment did not have.
pub fn check_assign(
    dest: &Dest,
    new: &Record,
    assigned: &[Record],
    at_port: Option<&PciDevice>,
    dom0: &Dom0Uses,
    grant: impl Fn(&str) -> Result<(), ApiError>,
) -> Result<Plan, ApiError> {
    let name = new.device_name();
    check_mode(new.mode, dest.name, &name)?;
    check_qube(dest, &name)?;
    let before = assigned.iter().find(|r| r.same_key(new)).cloned();
    let plan = match before {
        None => Plan::New,
        Some(b) if b.options == new.options && b.mode == new.mode => return Ok(Plan::Identical),
        Some(b) if b.options == new.options => Plan::Mode { before: b },
        Some(b) => Plan::Replace { before: b },
    };
    let dev = check_device(at_port, &new.port, &new.device_id, dest.name)?;
    check_dom0_use(dom0, dev, dest.name)?;
    check_siblings(assigned, new)?;
    let had = match &plan {
        Plan::Mode { before } | Plan::Replace { before } => before.options,
        Plan::New | Plan::Identical => PciOptions::default(),
    };
    for option in new.options.newly_enabled(had) {
        grant(option)?;
    }
    Ok(plan)
}

/// Whether `qube` may start now with its `required` assignments, given the
/// devices the other running qubes hold (`running`, each with its
/// assignment's options). Refusals name the device, the other qube and the
/// fix.
pub fn check_start(
    qube: &str,
    required: &[Record],
    running: &[Record],
    inventory: &Inventory,
    memory_balancing: bool,
) -> Result<(), ApiError> {
    let mem = if memory_balancing {
        format!(
            " Note: {qube} has memory balancing on, which a qube with PCI devices cannot use: it gets only its \
             initial memory (set `qvm-prefs {qube} maxmem 0` to make that explicit)."
        )
    } else {
        String::new()
    };
    for r in required.iter().filter(|r| r.mode == AssignmentMode::Required) {
        let Some(dev) = inventory
            .by_port(&r.port)
            .filter(|d| r.device_id.matches(&d.device_id()))
        else {
            let found = inventory.by_port(&r.port).map_or("no device is there".to_owned(), |d| {
                format!("{} is there instead", d.device_id())
            });
            return Err(ApiError::DeviceNotFound(format!(
                "cannot start {qube}: its required PCI device {} is not present ({found}). Connect the device, \
                 or unassign it (`qvm-pci unassign {qube} dom0:{}`) to start without it.{mem}",
                r.device_name(),
                r.port
            )));
        };
        let others = running.iter().filter(|h| h.frontend.as_str() != qube);
        if let Some(h) = others.clone().find(|h| h.port == r.port) {
            return Err(ApiError::Qubes(format!(
                "cannot start {qube}: PCI device {} ({}) is in use by {}, which is running; a device can be used \
                 by one running qube at a time. Shut {} down first, or unassign the device from one of them.{mem}",
                r.device_name(),
                dev.sbdf,
                h.frontend,
                h.frontend
            )));
        }
        if let Some(h) = others
            .clone()
            .find(|h| h.port.is_sibling(&r.port) && !(h.options.no_strict_reset && r.options.no_strict_reset))
        {
            return Err(ApiError::Qubes(format!(
                "cannot start {qube}: PCI device {} ({}) is a function of the same physical device as dom0:{}, \
                 which {} is using, and resetting one function resets both. Shut {} down first, assign all \
                 functions to one qube, or give both assignments -o no-strict-reset=True.{mem}",
                r.device_name(),
                dev.sbdf,
                h.port,
                h.frontend,
                h.frontend
            )));
        }
    }
    Ok(())
}
