//! `Assigned` (qubesd's record, read from its qubes.xml) and `Attached`
//! (what qubesd says a running qube holds).

use qubes_pci_rpc::{Assignment, DeviceRef, Wild};

use super::{Arg, Call, Output, Service};
use crate::error::ApiError;

/// The argument filter of both methods: `dom0+PORT[+DEVICE_ID]`.
fn filter(call: &Call) -> Option<&DeviceRef> {
    match &call.arg {
        Arg::Device(d) => Some(d),
        _ => None,
    }
}

fn selects(f: &DeviceRef, a: &Assignment) -> bool {
    f.backend == a.device.backend
        && (f.port == Wild::Any || f.port == a.device.port)
        && (f.device_id == Wild::Any || f.device_id == a.device.device_id)
}

fn filtered(call: &Call, all: Vec<Assignment>) -> Output {
    let f = filter(call);
    Output::Assignments(all.into_iter().filter(|a| f.is_none_or(|f| selects(f, a))).collect())
}

pub(super) fn assigned(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    Ok(filtered(call, svc.sources.qubes_xml()?.assigned_to(call.dest.as_str())))
}

pub(super) fn attached(svc: &Service, call: &Call) -> Result<Output, ApiError> {
    let running = call.dest_info().is_some_and(|i| i.is_running());
    if !running || call.dest.is_dom0() {
        return Ok(Output::Assignments(Vec::new()));
    }
    Ok(filtered(call, svc.sources.qubesd().attached(&call.dest)?))
}
