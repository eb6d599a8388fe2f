//! `Assigned` (what the store holds for a qube) and `Attached` (what a
//! running qube holds since its start).

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceRef, QubeName, Wild};

use super::{Arg, Call, Output, Service};
use crate::error::ApiError;
use crate::store::{Hold, Record, State};

/// The argument filter of both methods: `dom0+PORT[+DEVICE_ID]`.
fn filter(call: &Call) -> Option<&DeviceRef> {
    match &call.arg {
        Arg::Device(d) => Some(d),
        _ => None,
    }
}

pub(super) fn assigned(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let Ok(qube) = call.dest_name() else {
        return Ok(Output::Assignments(Vec::new()));
    };
    let state = svc.store().read()?;
    let filter = filter(call);
    Ok(Output::Assignments(
        state
            .assigned_to(&qube)
            .filter(|r| filter.is_none_or(|f| selects(f, r)))
            .map(Record::to_assignment)
            .collect(),
    ))
}

fn selects(f: &DeviceRef, r: &Record) -> bool {
    f.backend.is_dom0()
        && f.port.as_option().is_none_or(|p| *p == r.port)
        && (f.device_id == Wild::Any || f.device_id == r.device_id)
}

pub(super) fn attached(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let Ok(qube) = call.dest_name() else {
        return Ok(Output::Assignments(Vec::new()));
    };
    if !call.dest_info().is_some_and(|i| i.is_running()) {
        return Ok(Output::Assignments(Vec::new()));
    }
    let state = svc.store().read()?;
    let filter = filter(call);
    Ok(Output::Assignments(
        state
            .holds_of(&qube)
            .filter(|h| filter.is_none_or(|f| f.matches(&QubeName::dom0(), &h.port, &h.device_id)))
            .map(|h| attached_as(&state, &qube, h))
            .collect(),
    ))
}

/// A held device with the live device id, the stored assignment's mode and
/// the options it was started with; `manual` when nothing assigns it any
/// more.
fn attached_as(state: &State, qube: &QubeName, h: &Hold) -> Assignment {
    let stored = state
        .assigned_to(qube)
        .find(|r| r.port == h.port && r.device_id.matches(&h.device_id));
    Assignment {
        device: DeviceRef {
            backend: QubeName::dom0(),
            port: Wild::Is(h.port.clone()),
            device_id: Wild::Is(h.device_id.clone()),
        },
        frontend: Some(qube.clone()),
        mode: stored.map_or(AssignmentMode::Manual, |r| r.mode),
        options: h.options.to_pairs(),
    }
}
