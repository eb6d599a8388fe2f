//! `assign-defaults`: network controllers to sys-net and USB controllers
//! to sys-usb, as the Qubes installer does. Options stay off: they weaken
//! isolation and are only ever set explicitly.

use qubes_pci_rpc::{AssignmentMode, PciOptions, QubeName, Wild};

use crate::api::{apply_assign, AssignOutcome};
use crate::error::ApiError;
use crate::passthrough::rules;
use crate::pci::{Inventory, PciDevice};
use crate::store::{Record, State, Store};
use crate::sysinfo::SystemInfo;
use crate::Config;

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
    /// `assigned`, `changed`, `already assigned`, `skipped`.
    pub outcome: String,
    pub detail: String,
}

/// Plans (and unless `dry_run`, records in one write) the default
/// assignments.
pub fn assign_defaults(
    config: &Config,
    system: &SystemInfo,
    net: &QubeName,
    usb: &QubeName,
    dry_run: bool,
) -> Result<Vec<Line>, ApiError> {
    for q in [net, usb] {
        let info = system.get(q.as_str()).map(|(_, i)| i);
        if info.is_none() {
            return Err(ApiError::NoSuchQube(format!(
                "{q} (create it first, or name another qube with --net/--usb)"
            )));
        }
        rules::check_qube(q.as_str(), info, "controllers")?;
    }
    let inventory = Inventory::scan(&config.sysfs)?;
    let plan = |state: &mut State| -> Vec<Line> {
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
                sbdf: Some(d.sbdf),
            };
            let name = record.device_name();
            let existing: Vec<&str> = state
                .assignments
                .iter()
                .filter(|r| r.port == d.port)
                .map(|r| r.frontend.as_str())
                .collect();
            if !existing.is_empty() {
                lines.push(Line {
                    device: name,
                    sbdf: d.sbdf.to_string(),
                    qube: qube.to_string(),
                    outcome: "already assigned".to_owned(),
                    detail: format!("to {}; left as it is", existing.join(", ")),
                });
                continue;
            }
            let (outcome, detail) = match apply_assign(state, record, Some(d), |_| Ok(())) {
                Ok(AssignOutcome::Added { others, .. }) if others.is_empty() => ("assigned", String::new()),
                Ok(AssignOutcome::Added { others, .. }) => (
                    "assigned",
                    format!(
                        "also assigned to {}",
                        others.iter().map(|q| q.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ),
                Ok(AssignOutcome::Replaced { before, .. }) => ("changed", format!("was mode {}", before.mode)),
                Err(ApiError::AlreadyAssigned(_)) => ("already assigned", String::new()),
                Err(e) => ("skipped", e.to_string()),
            };
            lines.push(Line {
                device: name,
                sbdf: d.sbdf.to_string(),
                qube: qube.to_string(),
                outcome: outcome.to_owned(),
                detail,
            });
        }
        lines
    };
    let store = Store::new(&config.state_dir);
    if dry_run {
        let mut state = store.read()?;
        return Ok(plan(&mut state));
    }
    store.update(|state| Ok::<_, ApiError>(plan(state)))
}
