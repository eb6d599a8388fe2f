//! The write methods `Assign`, `Unassign` and `Set.assignment`: checked
//! here, then sent to qubesd as one canonical request each (qubesd's
//! qubes.xml is the one record), and qubesd's answer relayed.

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceRef, Method, PciOptions, QubeName, Wild};

use super::{Call, Output, Service};
use crate::error::ApiError;
use crate::passthrough::rules::{self, Dest, Plan};
use crate::passthrough::Record;
use crate::pci::Inventory;

/// The policy service that must also allow setting an option.
pub const OPTION_SERVICE: &str = "admin.vm.device.pci.Option";

pub(super) fn assign(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    let assignment =
        Assignment::deserialize(&call.req.untrusted_payload, &dev).map_err(|e| ApiError::Protocol(e.to_string()))?;
    let frontend = call.dest_name()?;
    if let Some(given) = &assignment.frontend {
        if *given != frontend {
            return Err(ApiError::Protocol(format!(
                "the payload's frontend_domain is {given}, but the call is for {frontend}"
            )));
        }
    }
    let new = record_of(&assignment, frontend.clone())?;
    rules::check_mode(new.mode, frontend.as_str(), &new.device_name())?;
    let dest = Dest {
        name: &call.dest,
        class: call.dest_info().and_then(|i| i.klass.as_deref()),
        virt_mode: None,
    };
    rules::check_qube(&dest, &new.device_name())?;
    let virt_mode = svc.qubesd().virt_mode(&frontend)?;
    let dest = Dest {
        virt_mode: Some(&virt_mode),
        ..dest
    };
    let assigned = svc.qubes_xml()?.records();
    let at_port = Inventory::scan_port(&svc.config.sysfs, &new.port)?;
    let dom0 = svc.dom0_uses(call.req.source.is_dom0());
    let plan = rules::check_assign(&dest, &new, &assigned, at_port.as_ref(), &dom0, |name| {
        grant_option(svc, call, name)
    })?;
    let others: Vec<String> = rules::also_assigned(&assigned, &new)
        .map(|r| r.frontend.to_string())
        .collect();
    match plan {
        Plan::New | Plan::Identical => send_assign(svc, &new)?,
        Plan::Mode { .. } => svc.forward(
            Method::SetAssignment,
            &new.device_ref().to_qarg(),
            &frontend,
            new.mode.as_str().as_bytes(),
        )?,
        Plan::Replace { before } => replace(svc, &before, &new)?,
    };
    tracing::info!(device = %new.device_name(), qube = %frontend, mode = %new.mode, "assigned");
    if !others.is_empty() {
        tracing::warn!(
            device = %new.device_name(),
            "PCI device is now assigned to several qubes ({} and {}); only one of them can run at a time",
            frontend,
            others.join(", ")
        );
    }
    Ok(Output::Empty)
}

/// The canonical Assign of `r`.
fn send_assign(svc: &Service, r: &Record) -> Result<Output, ApiError> {
    let payload = r.to_assignment().serialize()?;
    svc.forward(
        Method::Assign,
        &r.device_ref().to_qarg(),
        &r.frontend,
        payload.as_bytes(),
    )
}

/// Another set of options for an existing assignment: qubesd has no call
/// for it, so unassign and assign again; if the assign fails, the old
/// assignment is put back, so the qube never ends up without its device.
fn replace(svc: &Service, before: &Record, after: &Record) -> Result<Output, ApiError> {
    svc.forward(Method::Unassign, &before.device_ref().to_qarg(), &before.frontend, b"")?;
    match send_assign(svc, after) {
        Ok(o) => {
            tracing::info!(
                device = %after.device_name(),
                qube = %after.frontend,
                "options changed from [{}] to [{}]",
                before.options.enabled().collect::<Vec<_>>().join(","),
                after.options.enabled().collect::<Vec<_>>().join(","),
            );
            Ok(o)
        }
        Err(e) => {
            if let Err(restore) = send_assign(svc, before) {
                tracing::error!(
                    device = %before.device_name(),
                    qube = %before.frontend,
                    error = %restore.detail(),
                    "changing the options failed and the old assignment could not be restored; assign it again"
                );
            }
            Err(e)
        }
    }
}

/// A validated assignment for `frontend`: a concrete port and valid options.
pub fn record_of(assignment: &Assignment, frontend: QubeName) -> Result<Record, ApiError> {
    let Wild::Is(port) = assignment.device.port.clone() else {
        return Err(ApiError::Value(format!(
            "assign a PCI device to {frontend} by its port id (such as dom0+00_14.0+_): `qvm-pci` lists them"
        )));
    };
    let options = PciOptions::from_pairs(&assignment.options).map_err(|e| ApiError::Value(e.to_string()))?;
    Ok(Record {
        frontend,
        port,
        device_id: assignment.device.device_id.clone(),
        mode: assignment.mode,
        options,
    })
}

/// Setting an option needs its own allow rule for the same source and
/// target (`admin.vm.device.pci.Option+NAME`); dom0 needs none.
fn grant_option(svc: &Service, call: &Call, name: &str) -> Result<(), ApiError> {
    crate::policy::check_service(
        || svc.policy(),
        &call.system,
        &call.req.source,
        &call.req.target,
        OPTION_SERVICE,
        name,
        false,
    )
    .map_err(|why| option_denied(&call.req.source, &call.req.target.to_string(), name, &why))
}

/// The refusal of an option the policy does not grant.
pub fn option_denied(source: &QubeName, target: &str, name: &str, why: &str) -> ApiError {
    tracing::warn!(%source, target, option = name, "option denied: {why}");
    ApiError::PermissionDenied {
        message: format!(
            "setting {name} on a PCI assignment weakens isolation, and dom0's qrexec policy does not allow \
             {OPTION_SERVICE}+{name} from {source} to {target}; nothing was changed. A dom0 administrator can \
             allow it in the policy, or assign without the option"
        ),
        read: false,
    }
}

/// The assignment of `qube` that a call's argument names: same port and
/// device id; an argument without a device id also finds the one
/// assignment at that port.
pub fn find_for_arg<'a>(assigned: &'a [Record], qube: &QubeName, dev: &DeviceRef) -> Option<&'a Record> {
    let Wild::Is(port) = &dev.port else {
        return None;
    };
    let at_port = |r: &&Record| &r.frontend == qube && &r.port == port;
    if let Some(r) = assigned.iter().filter(at_port).find(|r| r.device_id == dev.device_id) {
        return Some(r);
    }
    if dev.device_id == Wild::Any {
        let mut candidates = assigned.iter().filter(at_port);
        if let (Some(r), None) = (candidates.next(), candidates.next()) {
            return Some(r);
        }
    }
    None
}

/// The argument qubesd needs for the assignment the caller named: the
/// stored identity when there is one, else the caller's own (canonical).
fn stored_qarg(svc: &Service, qube: &QubeName, dev: &DeviceRef) -> Result<String, ApiError> {
    let assigned = svc.qubes_xml()?.records();
    Ok(find_for_arg(&assigned, qube, dev).map_or_else(|| dev.to_qarg(), |r| r.device_ref().to_qarg()))
}

/// `Unassign`: by stored identity, whether or not the device still exists.
pub(super) fn unassign(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    let qube = call.dest_name()?;
    let arg = stored_qarg(svc, &qube, &dev)?;
    svc.forward(Method::Unassign, &arg, &qube, b"")?;
    tracing::info!(device = %dev, qube = %qube, "unassigned");
    Ok(Output::Empty)
}

/// `Set.assignment`: the payload is exactly a mode, and for PCI only
/// `required` takes effect.
pub(super) fn set_mode(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let mode = match &call.req.untrusted_payload[..] {
        b"required" => AssignmentMode::Required,
        b"auto-attach" => AssignmentMode::AutoAttach,
        b"ask-to-attach" => AssignmentMode::AskToAttach,
        _ => return Err(ApiError::InvalidMode),
    };
    let dev = call.device_arg()?;
    let qube = call.dest_name()?;
    rules::check_mode(mode, qube.as_str(), &dev.to_string())?;
    let arg = stored_qarg(svc, &qube, &dev)?;
    svc.forward(Method::SetAssignment, &arg, &qube, mode.as_str().as_bytes())?;
    tracing::info!(device = %dev, qube = %qube, "assignment mode set to {mode}");
    Ok(Output::Empty)
}
