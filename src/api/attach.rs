//! `Attach` and `Detach`. PCI devices reach a qube only when it starts and
//! leave it only when it stops, so against a running qube both are refused
//! with the way to do it; against a halted qube they answer as upstream.

use qubes_pci_rpc::Assignment;

use super::{Call, Output, Service};
use crate::error::ApiError;

pub(super) fn attach(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    if !call.req.untrusted_payload.is_empty() {
        Assignment::deserialize(&call.req.untrusted_payload, &dev).map_err(|e| ApiError::Protocol(e.to_string()))?;
    }
    let qube = call.dest_name()?;
    if call.dest_is_dom0() {
        return Err(ApiError::Qubes("Can't attach PCI device to dom0".into()));
    }
    let short = format!("{}:{}", dev.backend, dev.port);
    if !call.dest_info().is_some_and(|i| i.is_running()) {
        return Err(ApiError::NotRunning(format!(
            "VM not running, cannot attach device, do you mean `assign`? PCI devices reach a qube when it \
             starts: `qvm-pci assign --required {qube} {short}`, then start {qube}"
        )));
    }
    let state = svc.store().read()?;
    if let Some(h) = state.holds_of(&qube).find(|h| dev.port.matches(&h.port)) {
        return Err(ApiError::AlreadyAttached(format!(
            "device dom0:{}:{} of class pci already attached to {qube}",
            h.port, h.device_id
        )));
    }
    Err(ApiError::NotHalted(format!(
        "cannot attach PCI device {dev} to {qube} while it runs: PCI devices are handed to a qube only when it \
         starts (no hot-plug). Assign it (`qvm-pci assign --required {qube} {short}`), then restart {qube}"
    )))
}

pub(super) fn detach(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    let qube = call.dest_name()?;
    let running = call.dest_info().is_some_and(|i| i.is_running());
    let state = svc.store().read()?;
    let held = running && state.holds_of(&qube).any(|h| dev.port.matches(&h.port));
    if !held {
        return Err(ApiError::NotAssigned(format!(
            "pci device {} not attached to {qube}",
            dev.port
        )));
    }
    Err(ApiError::NotHalted(format!(
        "cannot detach PCI device dom0:{} from {qube} while it runs: PCI devices leave a qube only when it \
         stops. Unassign it (`qvm-pci unassign {qube} dom0:{}`) and shut {qube} down; the device then stays \
         on pciback and is not given back to dom0",
        dev.port, dev.port
    )))
}
