//! `assign-defaults`: network controllers to sys-net and USB controllers
//! to sys-usb, as the Qubes installer does. Options stay off: they weaken
//! isolation and are only ever set explicitly.

use qubes_pci_rpc::{AssignmentMode, Method, PciOptions, QubeName, Reply, UntrustedRequest, UntrustedTarget, Wild};

use super::rules::{self, Dest};
use super::Record;
use crate::api::Service;
use crate::error::ApiError;
use crate::pci::{Inventory, PciDevice};

/// Network controllers: base class 0x02.
pub fn is_network(d: &PciDevice) -> bool {
    d.class.is_some_and(|c| c >> 16 == 0x02)
}

/// USB controllers: class 0x0c, subclass 0x03.
pub fn is_usb(d: &PciDevice) -> bool {
    d.class.is_some_and(|c| c >> 8 == 0x0c03)
}

/// What happened to one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    pub device: String,
    pub sbdf: String,
    pub qube: String,
    /// `assigned`, `would assign` (dry run), `already assigned`, `skipped`.
    pub outcome: String,
    pub detail: String,
}

/// Assigns (or with `dry_run`, checks) every network and USB controller
/// that nothing is assigned to yet, each through the front door as dom0,
/// so the same rules apply and qubesd records it.
pub fn assign_defaults(svc: &Service, net: &QubeName, usb: &QubeName, dry_run: bool) -> Result<Vec<Line>, ApiError> {
    let system = svc.system_info()?;
    for q in [net, usb] {
        let Some((_, info)) = system.get(q.as_str()) else {
            return Err(ApiError::NoSuchQube(format!(
                "{q} (create it first, or name another qube with --net/--usb)"
            )));
        };
        let dest = Dest {
            name: q.as_str(),
            class: info.klass.as_deref(),
            virt_mode: None,
        };
        rules::check_qube(&dest, "controllers")?;
    }
    let inventory = Inventory::scan(&svc.config.sysfs)?;
    let assigned = svc.qubes_xml()?.records();
    let mut lines = Vec::new();
    for d in &inventory.devices {
        let qube = if is_network(d) {
            net
        } else if is_usb(d) {
            usb
        } else {
            continue;
        };
        let record = Record {
            frontend: qube.clone(),
            port: d.port.clone(),
            device_id: Wild::Is(d.device_id()),
            mode: AssignmentMode::Required,
            options: PciOptions::default(),
        };
        let line = |outcome: &str, detail: String| Line {
            device: record.device_name(),
            sbdf: d.sbdf.to_string(),
            qube: qube.to_string(),
            outcome: outcome.to_owned(),
            detail,
        };
        let existing: Vec<&str> = assigned
            .iter()
            .filter(|r| r.port == d.port)
            .map(|r| r.frontend.as_str())
            .collect();
        if !existing.is_empty() {
            lines.push(line(
                "already assigned",
                format!("to {}; left as it is", existing.join(", ")),
            ));
            continue;
        }
        let result = if dry_run {
            check_only(svc, &record, &assigned, d).map(|()| "would assign")
        } else {
            assign_as_dom0(svc, &record).map(|()| "assigned")
        };
        lines.push(match result {
            Ok(outcome) => line(outcome, String::new()),
            Err(e) => line("skipped", e.to_string()),
        });
    }
    Ok(lines)
}

fn check_only(svc: &Service, record: &Record, assigned: &[Record], dev: &PciDevice) -> Result<(), ApiError> {
    let virt_mode = svc.qubesd().virt_mode(&record.frontend)?;
    let dest = Dest {
        name: record.frontend.as_str(),
        class: None,
        virt_mode: Some(&virt_mode),
    };
    rules::check_assign(&dest, record, assigned, Some(dev), &svc.dom0_uses(true), |_| Ok(())).map(drop)
}

/// The Assign a dom0 administrator would send, through the same path as a
/// qube's.
fn assign_as_dom0(svc: &Service, record: &Record) -> Result<(), ApiError> {
    let request = UntrustedRequest {
        untrusted_method: Method::Assign.to_string(),
        untrusted_arg: record.device_ref().to_qarg(),
        untrusted_source: "dom0".to_owned(),
        untrusted_target: UntrustedTarget::Name(record.frontend.to_string()),
        untrusted_payload: record.to_assignment().serialize()?.into_bytes(),
    };
    match svc.handle(Ok(request)) {
        Reply::Ok(_) => Ok(()),
        Reply::Err { message, .. } | Reply::Named { message, .. } => Err(ApiError::Qubes(message)),
    }
}
