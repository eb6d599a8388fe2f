//! The write methods `Assign`, `Unassign` and `Set.assignment`: facts
//! gathered, [`decide`]d, then sent to qubesd as one canonical request each
//! (qubesd's qubes.xml is the one record), and qubesd's answer relayed.

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceRef, Method, QubeName, Wild};

use super::facts::{gather, Needs};
use super::{Call, Output, Service};
use crate::error::ApiError;
use crate::rules::{decide, Decision, Kind, Plan, Record};

pub(super) fn assign(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    let assignment =
        Assignment::deserialize(&call.req.untrusted_payload, &dev).map_err(|e| ApiError::Protocol(e.to_string()))?;
    let frontend = call.dest.clone();
    if let Some(given) = &assignment.frontend {
        if *given != frontend {
            return Err(ApiError::Protocol(format!(
                "the payload's frontend_domain is {given}, but the call is for {frontend}"
            )));
        }
    }
    let new = Record::requested(
        frontend.clone(),
        &assignment.device,
        assignment.mode,
        &assignment.options,
    )
    .map_err(|e| ApiError::Value(e.to_string()))?;
    let facts = gather(
        &svc.sources,
        call,
        Needs {
            ports: &[&new.port],
            options: new.options,
            virt_mode: new.mode == AssignmentMode::Required,
            assignments: true,
            attached: false,
            denied: new.mode == AssignmentMode::Required,
        },
    )?;
    let decision = decide(&Kind::Assign(new.clone()), &facts)?;
    log_warnings(&decision);
    match decision.plan {
        Plan::Mode { .. } => svc.forward(
            Method::SetAssignment,
            &new.device_ref().to_qarg(),
            &frontend,
            new.mode.as_str().as_bytes(),
        )?,
        Plan::Replace { before } => replace(svc, &before, &new)?,
        Plan::New | Plan::Identical | Plan::Proceed => send_assign(svc, &new)?,
    };
    tracing::info!(device = %new.device_name(), qube = %frontend, mode = %new.mode, "assigned");
    Ok(Output::Empty)
}

fn log_warnings(decision: &Decision) {
    for w in &decision.warnings {
        tracing::warn!("{w}");
    }
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
/// for it, so unassign and assign again. Whenever an answer is missing or a
/// step fails, what qubesd holds is read again (its qubes.xml) before the
/// next step, so the qube never ends up without its device: the new
/// assignment there is success; neither there puts the old one back.
fn replace(svc: &Service, before: &Record, after: &Record) -> Result<Output, ApiError> {
    let holds = |r: &Record| -> Result<bool, ApiError> {
        Ok(svc
            .sources
            .qubes_xml()?
            .records()
            .iter()
            .any(|s| s.same_key(r) && s.options == r.options && s.mode == r.mode))
    };
    match svc.forward(Method::Unassign, &before.device_ref().to_qarg(), &before.frontend, b"") {
        Ok(_) => {}
        Err(e @ ApiError::Unanswered { .. }) => {
            if holds(before)? {
                // The old assignment is still there: stop here, before a
                // late Unassign and a new Assign can cross.
                return Err(e);
            }
            tracing::warn!(device = %before.device_name(), qube = %before.frontend,
                "qubesd answered the Unassign of an option change late, but it was done; assigning with the new options");
        }
        Err(e) => return Err(e),
    }
    let failed = match send_assign(svc, after) {
        Ok(o) => {
            log_changed(before, after);
            return Ok(o);
        }
        Err(e) => e,
    };
    if holds(after)? {
        // qubesd did it and its answer was lost.
        log_changed(before, after);
        return Ok(Output::Empty);
    }
    let restored = send_assign(svc, before)
        .map(drop)
        .or_else(|restore| if holds(before)? { Ok(()) } else { Err(restore) });
    match restored {
        Ok(()) => Err(failed),
        Err(restore) => {
            tracing::error!(
                device = %before.device_name(),
                qube = %before.frontend,
                error = %restore.detail(),
                "changing the options failed and the old assignment could not be restored"
            );
            Err(ApiError::Qubes(format!(
                "changing the options of PCI device {} for {} failed ({failed}), and putting the old assignment \
                 back failed too: {} may have no assignment of it now. Check with `qvm-pci list {}` and assign it \
                 again (`qvm-pci assign --required {} dom0:{}`)",
                before.device_name(),
                before.frontend,
                before.frontend,
                before.frontend,
                before.frontend,
                before.port
            )))
        }
    }
}

fn log_changed(before: &Record, after: &Record) {
    tracing::info!(
        device = %after.device_name(),
        qube = %after.frontend,
        "options changed from [{}] to [{}]",
        before.options.enabled().collect::<Vec<_>>().join(","),
        after.options.enabled().collect::<Vec<_>>().join(","),
    );
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

/// `Unassign`: by stored identity, whether or not the device still exists.
pub(super) fn unassign(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    let qube = &call.dest;
    let assigned = svc.sources.qubes_xml()?.records();
    let arg = find_for_arg(&assigned, qube, &dev).map_or_else(|| dev.to_qarg(), |r| r.device_ref().to_qarg());
    decide(&Kind::Unassign, &gather(&svc.sources, call, Needs::default())?)?;
    svc.forward(Method::Unassign, &arg, qube, b"")?;
    tracing::info!(device = %dev, qube = %qube, "unassigned");
    Ok(Output::Empty)
}

/// `Set.assignment`: the payload is exactly a mode; for PCI only
/// `required` takes effect, and turning an assignment into `required`
/// meets every rule an Assign meets.
pub(super) fn set_mode(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let mode = match &call.req.untrusted_payload[..] {
        b"required" => AssignmentMode::Required,
        b"auto-attach" => AssignmentMode::AutoAttach,
        b"ask-to-attach" => AssignmentMode::AskToAttach,
        _ => return Err(ApiError::InvalidMode),
    };
    let dev = call.device_arg()?;
    let qube = &call.dest;
    let assigned = svc.sources.qubes_xml()?.records();
    let stored = find_for_arg(&assigned, qube, &dev).cloned();
    let arg = stored
        .as_ref()
        .map_or_else(|| dev.to_qarg(), |r| r.device_ref().to_qarg());
    let new = match stored {
        Some(r) => Record { mode, ..r },
        None => Record::requested(qube.clone(), &dev, mode, &[]).map_err(|e| ApiError::Value(e.to_string()))?,
    };
    let facts = gather(
        &svc.sources,
        call,
        Needs {
            ports: &[&new.port],
            virt_mode: mode == AssignmentMode::Required,
            denied: mode == AssignmentMode::Required,
            assignments: true,
            ..Needs::default()
        },
    )?;
    log_warnings(&decide(&Kind::SetMode(new), &facts)?);
    svc.forward(Method::SetAssignment, &arg, qube, mode.as_str().as_bytes())?;
    tracing::info!(device = %dev, qube = %qube, "assignment mode set to {mode}");
    Ok(Output::Empty)
}
