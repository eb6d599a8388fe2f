//! `Attach` and `Detach`. PCI devices reach a qube only when it starts and
//! leave it only when it stops, and a detached device is never handed back
//! to dom0: against a running qube both are refused with the way to do it,
//! against a halted one they answer as upstream does. Neither ever needs
//! qubesd to change anything, so neither is sent there.

use qubes_pci_rpc::{Assignment, AssignmentMode, PciOptions};

use super::{Call, Output, Service};
use crate::error::ApiError;
use crate::passthrough::check::{no_detach, no_hotplug};
use crate::passthrough::Record;

/// The device named by the call, for messages.
fn named(call: &Call) -> Result<Record, ApiError> {
    let dev = call.device_arg()?;
    Ok(Record {
        frontend: call.dest_name()?,
        port: dev
            .port
            .as_option()
            .cloned()
            .ok_or_else(|| ApiError::Protocol("no port".into()))?,
        device_id: dev.device_id,
        mode: AssignmentMode::Manual,
        options: PciOptions::default(),
    })
}

fn running(call: &Call) -> bool {
    call.dest_info().is_some_and(|i| i.is_running())
}

pub(super) fn attach(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    if !call.req.untrusted_payload.is_empty() {
        Assignment::deserialize(&call.req.untrusted_payload, &dev).map_err(|e| ApiError::Protocol(e.to_string()))?;
    }
    let r = named(call)?;
    let qube = &r.frontend;
    if call.dest_is_dom0() {
        return Err(ApiError::Qubes("Can't attach PCI device to dom0".into()));
    }
    if !running(call) {
        return Err(ApiError::NotRunning(format!(
            "VM not running, cannot attach device, do you mean `assign`? PCI devices reach a qube when it \
             starts: `qvm-pci assign --required {qube} dom0:{}`, then start {qube}",
            r.port
        )));
    }
    if let Some(a) = svc
        .qubesd()
        .attached(qube)?
        .into_iter()
        .find(|a| a.device.port.as_option() == Some(&r.port))
    {
        return Err(ApiError::AlreadyAttached(format!(
            "device {} of class pci already attached to {qube}",
            a.device
        )));
    }
    Err(no_hotplug(qube, &r))
}

pub(super) fn detach(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let r = named(call)?;
    let qube = &r.frontend;
    let attached = running(call)
        && svc
            .qubesd()
            .attached(qube)?
            .iter()
            .any(|a| a.device.port.as_option() == Some(&r.port));
    if !attached {
        return Err(ApiError::NotAssigned(format!(
            "pci device {} not attached to {qube}",
            r.port
        )));
    }
    Err(no_detach(qube, &r))
}
