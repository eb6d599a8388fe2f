//! `Attach` and `Detach`. PCI devices reach a qube only when it starts and
//! leave it only when it stops, and a detached device is never handed back
//! to dom0: against a running qube the rules refuse both with the way to
//! do it, against a halted one they answer as upstream does. Neither ever
//! needs qubesd to change anything, so neither is sent there.

use qubes_pci_rpc::{Assignment, PciPath};

use super::facts::{gather, Needs};
use super::{Call, Output, Service};
use crate::error::ApiError;
use crate::rules::{decide, Kind};

/// The port the call names.
fn port(call: &Call) -> Result<PciPath, ApiError> {
    call.device_arg()?
        .port
        .as_option()
        .cloned()
        .ok_or_else(|| ApiError::Protocol("no port".into()))
}

/// The facts both need: whether the destination runs, what it holds.
fn holding(svc: &Service, call: &Call) -> Result<crate::rules::Facts, ApiError> {
    gather(
        &svc.sources,
        call,
        Needs {
            attached: true,
            ..Needs::default()
        },
    )
}

pub(super) fn attach(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    if !call.req.untrusted_payload.is_empty() {
        Assignment::deserialize(&call.req.untrusted_payload, &dev).map_err(|e| ApiError::Protocol(e.to_string()))?;
    }
    let port = port(call)?;
    let qube = &call.dest;
    if qube.is_dom0() {
        return Err(ApiError::Qubes("Can't attach PCI device to dom0".into()));
    }
    let facts = holding(svc, call)?;
    if facts.dest.attached.contains(&port) {
        return Err(ApiError::AlreadyAttached(format!(
            "device dom0:{port} of class pci already attached to {qube}"
        )));
    }
    decide(&Kind::Attach(port.clone()), &facts)?;
    Err(ApiError::NotRunning(format!(
        "VM not running, cannot attach device, do you mean `assign`? PCI devices reach a qube when it \
         starts: `qvm-pci assign --required {qube} dom0:{port}`, then start {qube}"
    )))
}

pub(super) fn detach(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let port = port(call)?;
    let facts = holding(svc, call)?;
    decide(&Kind::Detach(port.clone()), &facts)?;
    Err(ApiError::NotAssigned(format!(
        "pci device {port} not attached to {}",
        call.dest
    )))
}
