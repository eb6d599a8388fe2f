//! The write methods: `Assign`, `Unassign` and `Set.assignment`. Each one
//! is recorded (or refused) before its reply is sent.

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceRef, PciOptions, QubeName, Wild};

use super::{Call, Output, Service};
use crate::error::ApiError;
use crate::passthrough::rules;
use crate::pci::{Inventory, PciDevice};
use crate::store::{Record, State};

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
    let record = record_of(&assignment, frontend)?;
    rules::check_qube(&call.dest, call.dest_info(), &record.device_name())?;
    let at_port = Inventory::scan_port(&svc.config.sysfs, &record.port)?;
    let outcome = svc
        .store()
        .update(|state| apply_assign(state, record, at_port.as_ref(), |name| grant_option(svc, call, name)))?;
    outcome.log();
    Ok(Output::Empty)
}

/// A validated assignment for `frontend`. Modes: PCI devices reach a qube
/// only at its start, so `manual` (hot-plug on request) has no meaning.
pub fn record_of(assignment: &Assignment, frontend: QubeName) -> Result<Record, ApiError> {
    if assignment.mode == AssignmentMode::Manual {
        return Err(ApiError::Value(format!(
            "PCI device {} cannot be assigned to {frontend} in manual mode: PCI devices reach a qube only when it \
             starts. Assign it with mode required (`qvm-pci assign --required {frontend} {}`)",
            assignment.device,
            short(&assignment.device),
        )));
    }
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
        sbdf: None,
    })
}

/// `dom0:PORT`, as `qvm-pci` takes a device.
fn short(d: &DeviceRef) -> String {
    format!("{}:{}", d.backend, d.port)
}

/// What an Assign did, for the log.
pub enum AssignOutcome {
    Added { record: Record, others: Vec<QubeName> },
    Replaced { before: Record, after: Record },
}

impl AssignOutcome {
    pub fn log(&self) {
        match self {
            AssignOutcome::Added { record, others } => {
                tracing::info!(device = %record.device_name(), qube = %record.frontend, mode = %record.mode, "assigned");
                if !others.is_empty() {
                    let list: Vec<String> = others.iter().map(|q| q.to_string()).collect();
                    tracing::warn!(
                        device = %record.device_name(),
                        qube = %record.frontend,
                        "PCI device is now assigned to several qubes ({} and {}); only one of them can run at a time",
                        record.frontend,
                        list.join(", ")
                    );
                }
            }
            AssignOutcome::Replaced { before, after } => tracing::info!(
                device = %after.device_name(),
                qube = %after.frontend,
                "assignment changed from mode {} options [{}] to mode {} options [{}]",
                before.mode,
                before.options.enabled().collect::<Vec<_>>().join(","),
                after.mode,
                after.options.enabled().collect::<Vec<_>>().join(","),
            ),
        }
    }
}

/// Applies one Assign to `state`: an identical assignment is
/// `DeviceAlreadyAssigned`; one with another mode or other options is
/// replaced in place (one write, no window without an assignment); a new
/// one must pass the device and multi-function rules (`at_port`: the live
/// device at the record's port). `grant` is asked for
/// every option the call turns on.
pub fn apply_assign(
    state: &mut State,
    mut record: Record,
    at_port: Option<&PciDevice>,
    grant: impl Fn(&str) -> Result<(), ApiError>,
) -> Result<AssignOutcome, ApiError> {
    if let Some(i) = state.find(&record) {
        let before = state
            .assignments
            .get(i)
            .cloned()
            .ok_or_else(|| ApiError::Qubes("store index".into()))?;
        if before.mode == record.mode && before.options == record.options {
            return Err(ApiError::AlreadyAssigned(format!(
                "pci device {} already assigned to {}",
                record.device_name(),
                record.frontend
            )));
        }
        for name in record.options.newly_enabled(before.options) {
            grant(name)?;
        }
        rules::check_siblings(state, &record)?;
        record.sbdf = before.sbdf;
        if let Some(slot) = state.assignments.get_mut(i) {
            *slot = record.clone();
        }
        return Ok(AssignOutcome::Replaced { before, after: record });
    }
    let dev = rules::check_device(at_port, &record.port, &record.device_id, record.frontend.as_str())?;
    record.sbdf = Some(dev.sbdf);
    rules::check_siblings(state, &record)?;
    for name in record.options.newly_enabled(PciOptions::default()) {
        grant(name)?;
    }
    let others = rules::also_assigned(state, &record)
        .map(|r| r.frontend.clone())
        .collect();
    state.assignments.push(record.clone());
    Ok(AssignOutcome::Added { record, others })
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
    .map_err(|why| {
        tracing::warn!(source = %call.req.source, target = %call.req.target, option = name, "option denied: {why}");
        ApiError::PermissionDenied(format!(
            "setting {name} on a PCI assignment weakens isolation, and the qrexec policy does not allow \
             {OPTION_SERVICE}+{name} from {} to {}; nothing was changed. An administrator can allow it in \
             /etc/qubes/policy.d, or assign without the option",
            call.req.source, call.req.target
        ))
    })
}

/// The stored assignment of `qube` that a call's argument names: same
/// port and device id; an argument without a device id also finds the one
/// assignment at that port.
pub fn find_for_arg(state: &State, qube: &QubeName, dev: &DeviceRef) -> Option<usize> {
    let Wild::Is(port) = &dev.port else {
        return None;
    };
    let at_port = |r: &&Record| &r.frontend == qube && &r.port == port;
    if let Some(i) = state
        .assignments
        .iter()
        .position(|r| at_port(&r) && r.device_id == dev.device_id)
    {
        return Some(i);
    }
    if dev.device_id == Wild::Any {
        let mut candidates = state.assignments.iter().enumerate().filter(|(_, r)| at_port(r));
        if let (Some((i, _)), None) = (candidates.next(), candidates.next()) {
            return Some(i);
        }
    }
    None
}

/// `Unassign`: by stored identity, whether or not the device still exists.
pub(super) fn unassign(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let dev = call.device_arg()?;
    let qube = call.dest_name()?;
    let removed = svc.store().update(|state| match find_for_arg(state, &qube, &dev) {
        Some(i) => Ok(state.assignments.remove(i)),
        None => Err(ApiError::NotAssigned(format!(
            "pci device {dev} not assigned to {qube}"
        ))),
    })?;
    tracing::info!(device = %removed.device_name(), qube = %qube, "unassigned");
    Ok(Output::Empty)
}

/// `Set.assignment`: the payload is exactly a mode; options are kept.
pub(super) fn set_mode(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let mode = match &call.req.untrusted_payload[..] {
        b"required" => AssignmentMode::Required,
        b"auto-attach" => AssignmentMode::AutoAttach,
        b"ask-to-attach" => AssignmentMode::AskToAttach,
        _ => return Err(ApiError::InvalidMode),
    };
    let dev = call.device_arg()?;
    let qube = call.dest_name()?;
    let changed = svc.store().update(|state| {
        let i = find_for_arg(state, &qube, &dev)
            .ok_or_else(|| ApiError::Value(format!("Device {dev} not assigned to {qube}")))?;
        let slot = state
            .assignments
            .get_mut(i)
            .ok_or_else(|| ApiError::Qubes("store index".into()))?;
        let before = slot.mode;
        slot.mode = mode;
        Ok::<_, ApiError>((before != mode).then(|| (slot.device_name(), before)))
    })?;
    if let Some((device, before)) = changed {
        tracing::info!(%device, qube = %qube, "assignment mode changed from {before} to {mode}");
    }
    Ok(Output::Empty)
}
