//! `qubes-pci-admin check KIND`: the rules for the qubesd extension. The
//! extension runs inside qubesd's event loop and must never call back into
//! qubesd, so it passes every fact as one JSON object on stdin; the answer
//! is one JSON object: `{"ok": true}` or `{"ok": false, "exception": NAME,
//! "message": TEXT}`. Only sysfs (the device at a port) and the policy
//! files are read here.

use std::collections::BTreeMap;

use qubes_pci_rpc::{AssignmentMode, DeviceId, PciOptions, PciPath, QubeName, Wild};
use serde::Deserialize;

use super::rules::{self, Dest};
use super::Record;
use crate::error::ApiError;
use crate::pci::Inventory;
use crate::sysinfo::SystemInfo;
use crate::Config;

/// The checks the extension asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `admin-permission:admin.vm.device.pci.Assign`
    Assign,
    /// `admin-permission:admin.vm.device.pci.Set.assignment`
    SetMode,
    /// `admin-permission:admin.vm.device.pci.Attach`
    Attach,
    /// `admin-permission:admin.vm.device.pci.Detach`
    Detach,
    /// `domain-pre-start`
    Start,
}

/// A device as the event names it.
#[derive(Debug, Deserialize)]
pub struct DeviceFact {
    #[serde(default = "dom0")]
    pub backend: String,
    pub port: String,
    #[serde(default = "any")]
    pub device_id: String,
}

fn dom0() -> String {
    "dom0".to_owned()
}

fn any() -> String {
    "*".to_owned()
}

/// One assignment, as qubesd holds it.
#[derive(Debug, Deserialize)]
pub struct AssignmentFact {
    pub qube: String,
    #[serde(default = "dom0")]
    pub backend: String,
    pub port: String,
    #[serde(default = "any")]
    pub device_id: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl AssignmentFact {
    /// As the rules see it; `None` for what is not a dom0 PCI device with
    /// a port (it cannot clash with one). Options count as qubesd renders
    /// them: any non-empty value is on.
    fn record(&self) -> Option<Record> {
        if self.backend != "dom0" {
            return None;
        }
        let on = |name: &str| self.options.get(name).is_some_and(|v| !v.is_empty());
        Some(Record {
            frontend: QubeName::parse(&self.qube).ok()?,
            port: PciPath::parse(&self.port).ok()?,
            device_id: wild_id(&self.device_id).ok()?,
            mode: AssignmentMode::parse(self.mode.as_deref().unwrap_or("required")).ok()?,
            options: PciOptions {
                no_strict_reset: on(qubes_pci_rpc::options::NO_STRICT_RESET),
                permissive: on(qubes_pci_rpc::options::PERMISSIVE),
            },
        })
    }
}

fn wild_id(s: &str) -> Result<Wild<DeviceId>, ApiError> {
    Ok(match s {
        "*" | "" => Wild::Any,
        d => Wild::Is(DeviceId::parse(d)?),
    })
}

#[derive(Debug, Deserialize)]
pub struct Facts {
    /// The calling qube (`dom0` for dom0's own tools).
    #[serde(default = "dom0")]
    pub source: String,
    /// The destination qube (for `start`: the qube starting).
    pub dest: String,
    #[serde(default)]
    pub dest_class: Option<String>,
    #[serde(default)]
    pub dest_virt_mode: Option<String>,
    #[serde(default)]
    pub dest_running: bool,
    #[serde(default)]
    pub memory_balancing: bool,
    #[serde(default)]
    pub device: Option<DeviceFact>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Every qube's PCI assignments (for `start`: the starting qube's).
    #[serde(default)]
    pub assignments: Vec<AssignmentFact>,
    /// For `start`: the devices the other running qubes hold.
    #[serde(default)]
    pub running: Vec<AssignmentFact>,
    /// The source's and destination's system info, for the policy grants
    /// of options a qube turns on.
    #[serde(default)]
    pub system: Option<SystemInfo>,
}

/// Runs one check.
pub fn run(config: &Config, kind: Kind, facts: &Facts) -> Result<(), ApiError> {
    let dest = QubeName::parse(&facts.dest)?;
    let device = || -> Result<Record, ApiError> {
        let d = facts
            .device
            .as_ref()
            .ok_or_else(|| ApiError::Protocol("the facts name no device".into()))?;
        if d.backend != "dom0" {
            return Err(ApiError::DeviceNotFound(format!(
                "PCI devices belong to dom0, not {}",
                d.backend
            )));
        }
        let port = PciPath::parse(&d.port).map_err(|_| {
            ApiError::DeviceNotFound(format!(
                "name the PCI device by its port id, such as dom0:00_14.0 (`qvm-pci` lists them), not {:?}",
                d.port
            ))
        })?;
        let options: Vec<(String, String)> = facts.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(Record {
            frontend: dest.clone(),
            port,
            device_id: wild_id(&d.device_id)?,
            mode: AssignmentMode::parse(facts.mode.as_deref().unwrap_or("manual"))?,
            options: PciOptions::from_pairs(&options).map_err(|e| ApiError::Value(e.to_string()))?,
        })
    };
    match kind {
        Kind::Assign => {
            let new = device()?;
            let assigned: Vec<Record> = facts.assignments.iter().filter_map(AssignmentFact::record).collect();
            let at_port = Inventory::scan_port(&config.sysfs, &new.port)?;
            let d = Dest {
                name: dest.as_str(),
                class: facts.dest_class.as_deref(),
                virt_mode: facts.dest_virt_mode.as_deref(),
            };
            let dom0 = rules::Dom0Uses {
                uses: crate::pci::dom0_use::scan(&config.sysfs, &config.procfs),
                from_dom0: facts.source == "dom0",
            };
            rules::check_assign(&d, &new, &assigned, at_port.as_ref(), &dom0, |option| {
                grant(config, facts, option)
            })
            .map(drop)
        }
        Kind::SetMode => {
            let new = device()?;
            rules::check_mode(new.mode, dest.as_str(), &new.device_name())
        }
        Kind::Attach if facts.dest_running => Err(no_hotplug(&dest, &device()?)),
        Kind::Detach if facts.dest_running => Err(no_detach(&dest, &device()?)),
        Kind::Attach | Kind::Detach => Ok(()),
        Kind::Start => {
            let required: Vec<Record> = facts.assignments.iter().filter_map(AssignmentFact::record).collect();
            let running: Vec<Record> = facts.running.iter().filter_map(AssignmentFact::record).collect();
            if required.is_empty() {
                return Ok(());
            }
            let inventory = Inventory::scan(&config.sysfs)?;
            rules::check_start(dest.as_str(), &required, &running, &inventory, facts.memory_balancing)
        }
    }
}

/// Turning an option on from a qube needs its own allow rule; dom0 needs none.
fn grant(config: &Config, facts: &Facts, option: &str) -> Result<(), ApiError> {
    let source = QubeName::parse(&facts.source)?;
    if source.is_dom0() {
        return Ok(());
    }
    let system = facts.system.clone().unwrap_or_default();
    let target = qubes_pci_rpc::Target::Qube(qubes_pci_rpc::QubeRef::Name(QubeName::parse(&facts.dest)?));
    let dirs = config.policy_dirs();
    crate::policy::check_service(
        || {
            crate::policy::Policy::load_dirs(&dirs)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string())
        },
        &system,
        &source,
        &target,
        crate::api::OPTION_SERVICE,
        option,
        false,
    )
    .map_err(|why| crate::api::option_denied(&source, &facts.dest, option, &why))
}

/// Attach into a running qube is a hot-plug, which PCI passthrough here
/// never does.
pub fn no_hotplug(qube: &QubeName, dev: &Record) -> ApiError {
    let short = format!("dom0:{}", dev.port);
    ApiError::NotHalted(format!(
        "cannot attach PCI device {} to {qube} while it runs: PCI devices are handed to a qube only when it \
         starts (no hot-plug). Assign it (`qvm-pci assign --required {qube} {short}`), then restart {qube}",
        dev.device_name()
    ))
}

/// Detaching from a running qube would hand the device back to dom0.
pub fn no_detach(qube: &QubeName, dev: &Record) -> ApiError {
    ApiError::NotHalted(format!(
        "cannot detach PCI device dom0:{} from {qube} while it runs: PCI devices leave a qube only when it \
         stops, and a detached device is never handed back to dom0. Unassign it (`qvm-pci unassign {qube} \
         dom0:{}`) and shut {qube} down",
        dev.port, dev.port
    ))
}

/// The JSON answer for the extension.
pub fn verdict(result: &Result<(), ApiError>) -> serde_json::Value {
    match result {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(e) => {
            let reply = e.to_reply();
            serde_json::json!({
                "ok": false,
                "exception": reply.exception_name().unwrap_or("QubesException"),
                "message": e.to_string(),
            })
        }
    }
}
