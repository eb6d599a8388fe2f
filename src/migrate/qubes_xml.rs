//! `import-qubes-xml`: the `<devices class="pci">` assignments of an
//! existing `qubes.xml`, including the legacy `required=` attribute, the
//! legacy `identity` option and legacy BDF ids, which are moved to PCI
//! paths as qubesd does on load. Importing twice changes nothing.
//!
//! Devices need not be present (the records are migrated, not created);
//! the qube and multi-function rules still apply.

use std::path::Path;

use qubes_pci_rpc::{AssignmentMode, DeviceId, PciOptions, PciPath, QubeName, Sbdf, Wild};

use crate::error::ApiError;
use crate::passthrough::rules;
use crate::pci::Inventory;
use crate::store::{Record, State, Store};
use crate::sysinfo::SystemInfo;
use crate::Config;

/// One `<device>` entry of the file, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub qube: String,
    pub backend: String,
    pub id: String,
    pub mode: Option<String>,
    pub legacy_required: Option<String>,
    pub identity: Option<String>,
    pub options: Vec<(String, String)>,
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub qube: String,
    pub id: String,
    pub imported: bool,
    pub detail: String,
}

/// The PCI entries of a qubes.xml text.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "qubes" {
        return Err(format!("the root element is <{}>, not <qubes>", root.tag_name().name()));
    }
    let mut out = Vec::new();
    let domains = root
        .children()
        .filter(|n| n.has_tag_name("domains"))
        .flat_map(|d| d.children().filter(|n| n.has_tag_name("domain")));
    for domain in domains {
        let name = domain
            .children()
            .filter(|n| n.has_tag_name("properties"))
            .flat_map(|p| p.children().filter(|n| n.has_tag_name("property")))
            .find(|p| p.attribute("name") == Some("name"))
            .and_then(|p| p.text())
            .unwrap_or_default()
            .to_owned();
        let devices = domain
            .children()
            .filter(|n| n.has_tag_name("devices") && n.attribute("class") == Some("pci"))
            .flat_map(|d| d.children().filter(|n| n.has_tag_name("device")));
        for dev in devices {
            let mut identity = dev.attribute("identity").map(str::to_owned);
            let mut options = Vec::new();
            for opt in dev.children().filter(|n| n.has_tag_name("option")) {
                let key = opt.attribute("name").unwrap_or_default().to_owned();
                let value = opt.text().unwrap_or_default().to_owned();
                if key == "identity" {
                    identity.get_or_insert(value);
                } else {
                    options.push((key, value));
                }
            }
            out.push(Entry {
                qube: name.clone(),
                backend: dev.attribute("backend-domain").unwrap_or_default().to_owned(),
                id: dev.attribute("id").unwrap_or_default().to_owned(),
                mode: dev.attribute("mode").map(str::to_owned),
                legacy_required: dev.attribute("required").map(str::to_owned),
                identity,
                options,
            });
        }
    }
    Ok(out)
}

/// Reads, converts and records the file's assignments in one write.
pub fn import(config: &Config, system: &SystemInfo, file: &Path) -> Result<Vec<Outcome>, ApiError> {
    let path = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| ApiError::Qubes(format!("cannot read {path}: {e}")))?;
    let entries = parse(&text).map_err(|reason| ApiError::Qubes(format!("{path} is not a qubes.xml: {reason}")))?;
    let inventory = Inventory::scan(&config.sysfs)?;
    Store::new(&config.state_dir).update(|state| {
        Ok::<_, ApiError>(
            entries
                .iter()
                .map(|e| import_one(state, system, &inventory, e))
                .collect(),
        )
    })
}

fn import_one(state: &mut State, system: &SystemInfo, inventory: &Inventory, e: &Entry) -> Outcome {
    let (imported, detail) = match convert(system, inventory, e) {
        Err(why) => (false, why),
        Ok((record, notes)) => match apply(state, record) {
            Ok(()) => (true, notes.join("; ")),
            Err(why) => (false, why),
        },
    };
    Outcome {
        qube: e.qube.clone(),
        id: e.id.clone(),
        imported,
        detail,
    }
}

/// The entry as a record, with notes on what was converted.
fn convert(system: &SystemInfo, inventory: &Inventory, e: &Entry) -> Result<(Record, Vec<String>), String> {
    let mut notes = Vec::new();
    if e.backend != "dom0" {
        return Err(format!(
            "backend {:?} is not dom0 (only dom0 has PCI devices)",
            e.backend
        ));
    }
    let qube = QubeName::parse(&e.qube).map_err(|err| format!("qube name: {err}"))?;
    let info = system
        .get(qube.as_str())
        .map(|(_, i)| i)
        .ok_or_else(|| format!("qube {qube} does not exist in the system info"))?;
    let mode = match (&e.mode, &e.legacy_required) {
        (Some(m), _) => AssignmentMode::parse(m).map_err(|err| err.to_string())?,
        (None, Some(r)) if r.eq_ignore_ascii_case("true") => AssignmentMode::Required,
        (None, Some(_)) => AssignmentMode::AutoAttach,
        (None, None) => AssignmentMode::Required,
    };
    if e.legacy_required.is_some() && e.mode.is_none() {
        notes.push(format!("legacy required= attribute read as mode {mode}"));
    }
    if mode == AssignmentMode::Manual {
        return Err("mode manual: PCI devices are only attached at start, assign it as required".into());
    }
    let (port, sbdf) = resolve_port(inventory, &e.id, &mut notes)?;
    let device_id = match e.identity.as_deref() {
        None | Some("*") => Wild::Any,
        Some(d) => Wild::Is(DeviceId::parse(d).map_err(|err| err.to_string())?),
    };
    let options = PciOptions::from_pairs(&e.options).map_err(|err| err.to_string())?;
    for (k, v) in &e.options {
        if v == "False" {
            notes.push(format!(
                "option {k}='False' is off here (qubesd treated any value as on)"
            ));
        }
    }
    let record = Record {
        frontend: qube,
        port,
        device_id,
        mode,
        options,
        sbdf,
    };
    rules::check_qube(&e.qube, Some(info), &record.device_name()).map_err(|err| err.to_string())?;
    match inventory.by_port(&record.port) {
        None => notes.push("device not present now (imported anyway)".into()),
        Some(d) if !record.device_id.matches(&d.device_id()) => notes.push(format!(
            "the device now at this port is {}, not the assigned one: it will not be attached until that one is back",
            d.device_id()
        )),
        Some(_) => {}
    }
    Ok((record, notes))
}

/// A PCI path for `id`: a path of a present device as it is; a legacy BDF
/// of a present device moved to that device's path; otherwise the id as a
/// path, if it is one.
fn resolve_port(inventory: &Inventory, id: &str, notes: &mut Vec<String>) -> Result<(PciPath, Option<Sbdf>), String> {
    let as_path = PciPath::parse(id).ok();
    if let Some(p) = &as_path {
        if let Some(d) = inventory.by_port(p) {
            return Ok((p.clone(), Some(d.sbdf)));
        }
    }
    if let Ok(sbdf) = Sbdf::parse(id) {
        if let Some(d) = inventory.by_sbdf(&sbdf) {
            if as_path.as_ref() != Some(&d.port) {
                notes.push(format!("legacy id {id} ({sbdf}) moved to PCI path {}", d.port));
            }
            return Ok((d.port.clone(), Some(d.sbdf)));
        }
    }
    as_path
        .map(|p| (p, None))
        .ok_or_else(|| format!("id {id:?} is neither a PCI path nor a PCI address"))
}

fn apply(state: &mut State, record: Record) -> Result<(), String> {
    if let Some(existing) = state.find(&record).and_then(|i| state.assignments.get(i)) {
        return Err(if existing.mode == record.mode && existing.options == record.options {
            "already in the store".to_owned()
        } else {
            format!(
                "already in the store with mode {} and other settings; kept the store's",
                existing.mode
            )
        });
    }
    rules::check_siblings(state, &record).map_err(|e| e.to_string())?;
    state.assignments.push(record);
    Ok(())
}
