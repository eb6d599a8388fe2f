//! dom0's diagnosis commands, on the same facts and the same `decide` as
//! the front door: `preflight` (why a qube will not start), `hide-list`
//! (what dom0's kernel should hide at boot) and `reconcile` (assignments
//! after a hardware change).

use std::collections::BTreeSet;

use qubes_pci_rpc::{AssignmentMode, Method, QubeName, Reply, Sbdf, UntrustedRequest, UntrustedTarget, Wild};

use super::{Service, Sources};
use crate::error::ApiError;
use crate::pci::hide::HideOptions;
use crate::pci::Inventory;
use crate::rules::{start_problems, Dest, Facts, Problem, Record, Setting, VirtMode};

/// The facts of `qube`'s start, read now: its properties from qubesd, every
/// assignment from qubes.xml, what the running qubes hold (qubesd's
/// `Attached`), the devices present and what dom0 uses and hides.
pub fn start_facts(sources: &Sources, qube: &QubeName) -> Result<Facts, ApiError> {
    let system = sources.system_info()?;
    let Some((_, info)) = system.get(qube.as_str()) else {
        return Err(ApiError::NoSuchQube(qube.to_string()));
    };
    let admin_vm = qube.is_dom0() || info.klass.as_deref() == Some("AdminVM");
    let qubesd = sources.qubesd();
    let number =
        |name: &str| -> Result<Option<u64>, ApiError> { Ok(qubesd.property(qube, name)?.0.trim().parse().ok()) };
    let (virt_mode, memory_mb, maxmem_mb, devices_denied) = if admin_vm {
        (None, None, None, String::new())
    } else {
        let (value, default) = qubesd.virt_mode(qube)?;
        (
            VirtMode::parse(&value).map(|value| Setting {
                value,
                explicit: !default,
            }),
            number("memory")?,
            number("maxmem")?,
            qubesd.property(qube, "devices_denied")?.0,
        )
    };
    let assignments = sources.qubes_xml()?.records();
    let mut running = Vec::new();
    for (name, _) in system
        .domains
        .iter()
        .filter(|(n, i)| i.is_running() && n.as_str() != qube.as_str())
    {
        let Ok(other) = QubeName::parse(name) else { continue };
        if other.is_dom0() {
            continue;
        }
        for a in qubesd.attached(&other)? {
            let Some(port) = a.device.port.as_option() else {
                continue;
            };
            // With the options of its assignment of that device, if any.
            let held = assignments
                .iter()
                .find(|r| r.frontend == other && &r.port == port)
                .cloned()
                .or_else(|| Record::stored(other.clone(), &a));
            running.extend(held);
        }
    }
    let ports: Vec<&qubes_pci_rpc::PciPath> = assignments
        .iter()
        .filter(|r| &r.frontend == qube && r.mode == AssignmentMode::Required)
        .map(|r| &r.port)
        .collect();
    let config = &sources.config;
    let present = crate::gather::present(&config.sysfs, &config.procfs, &ports)?;
    let hidden = crate::gather::hidden(&config.sysfs, &config.procfs)?;
    Ok(Facts {
        source: QubeName::dom0(),
        dest: Dest {
            admin_vm,
            virt_mode,
            running: info.is_running(),
            memory_balancing: maxmem_mb.is_some_and(|m| m > 0),
            memory_mb,
            maxmem_mb,
            devices_denied,
            ..Dest::named(qube.clone())
        },
        present,
        assignments,
        running,
        grants: qubes_pci_rpc::PciOptions {
            no_strict_reset: true,
            permissive: true,
        },
        hidden,
    })
}

/// `preflight QUBE`: every problem of its start.
pub fn preflight(sources: &Sources, qube: &QubeName) -> Result<Vec<Problem>, ApiError> {
    Ok(start_problems(&start_facts(sources, qube)?))
}

/// The devices present with a `required` assignment whose identity
/// matches: what dom0's kernel should hide from its drivers at boot.
pub fn to_hide(sources: &Sources) -> Result<(Inventory, BTreeSet<Sbdf>), ApiError> {
    let inventory = Inventory::scan(&sources.config.sysfs)?;
    let records = sources.qubes_xml()?.records();
    let sbdfs = records
        .iter()
        .filter(|r| r.mode == AssignmentMode::Required)
        .filter_map(|r| {
            inventory
                .by_port(&r.port)
                .filter(|d| r.device_id.matches(&d.device_id()))
        })
        .map(|d| d.sbdf)
        .collect();
    Ok((inventory, sbdfs))
}

/// The `rd.qubes.hide_pci=` option for `sbdfs`, each as its PCI path (the
/// form R4.3's dracut module resolves through the bridges, stable when
/// buses renumber).
pub fn hide_option(inventory: &Inventory, sbdfs: &BTreeSet<Sbdf>) -> String {
    let ports: Vec<String> = inventory
        .devices
        .iter()
        .filter(|d| sbdfs.contains(&d.sbdf))
        .map(|d| d.port.to_string())
        .collect();
    format!("rd.qubes.hide_pci={}", ports.join(","))
}

/// One disagreement between the assignments and the running kernel's
/// command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HideMismatch {
    /// A device with a required assignment that dom0's drivers may take.
    NotHidden(Sbdf, String),
    /// An `rd.qubes.hide_pci=` entry for a device nobody has (or nothing
    /// present).
    NotAssigned(String, Option<Sbdf>),
}

/// `hide-list --check`: the running kernel's command line
/// (`<procfs>/cmdline`) against the assignments.
pub fn hide_check(sources: &Sources) -> Result<Vec<HideMismatch>, ApiError> {
    let (inventory, wanted) = to_hide(sources)?;
    let cmdline = std::fs::read_to_string(sources.config.procfs.join("cmdline")).map_err(|e| {
        ApiError::dom0(
            "dom0's kernel command line cannot be read",
            format!("{}: {e}", sources.config.procfs.join("cmdline").display()),
        )
    })?;
    let options = HideOptions::parse(&cmdline);
    let hidden = options.hidden(&inventory);
    let mut out: Vec<HideMismatch> = wanted
        .iter()
        .filter(|s| !hidden.contains(s))
        .map(|s| {
            let port = inventory.by_sbdf(s).map(|d| d.port.to_string()).unwrap_or_default();
            HideMismatch::NotHidden(*s, port)
        })
        .collect();
    out.extend(
        options
            .explicit(&inventory)
            .into_iter()
            .filter(|(_, s)| s.is_none_or(|s| !wanted.contains(&s)))
            .map(|(entry, s)| HideMismatch::NotAssigned(entry, s)),
    );
    Ok(out)
}

/// What became of an assignment's device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub qube: String,
    /// `moved`, `replaced` or `gone`.
    pub kind: &'static str,
    pub port: String,
    pub device_id: String,
    /// For `moved`: where the device is now.
    pub now_at: Option<String>,
    /// After `--apply`: what was done (`re-pointed`, or why not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
}

/// `reconcile`: every PCI assignment whose device is not at its port as
/// recorded. `moved`: the identity is absent there and present at exactly
/// one other port; `replaced`: another device is at the port; `gone`: the
/// device is nowhere. With `apply`, a moved assignment is re-pointed
/// through the front door as dom0 (same mode and options, same rules): the
/// new one assigned first, then the old one unassigned, so the qube never
/// ends up with neither.
pub fn reconcile(svc: &Service, apply: bool) -> Result<Vec<Change>, ApiError> {
    let inventory = Inventory::scan(&svc.sources.config.sysfs)?;
    let records = svc.sources.qubes_xml()?.records();
    let mut out = Vec::new();
    for r in &records {
        let at = inventory.by_port(&r.port);
        if at.is_some_and(|d| r.device_id.matches(&d.device_id())) {
            continue;
        }
        let elsewhere: Vec<&crate::pci::PciDevice> = match &r.device_id {
            Wild::Is(id) => inventory
                .devices
                .iter()
                .filter(|d| d.port != r.port && &d.device_id() == id)
                .collect(),
            Wild::Any => Vec::new(),
        };
        let (kind, now_at) = match (elsewhere.as_slice(), at) {
            ([one], _) => ("moved", Some(one.port.clone())),
            (_, Some(_)) => ("replaced", None),
            (_, None) => ("gone", None),
        };
        let mut change = Change {
            qube: r.frontend.to_string(),
            kind,
            port: r.port.to_string(),
            device_id: r.device_id.to_string(),
            now_at: now_at.as_ref().map(ToString::to_string),
            applied: None,
        };
        if let (true, Some(new_port)) = (apply, now_at) {
            let moved = Record {
                port: new_port,
                ..r.clone()
            };
            change.applied = Some(match repoint(svc, r, &moved) {
                Ok(()) => "re-pointed".to_owned(),
                Err(e) => format!("not re-pointed: {e}"),
            });
        }
        out.push(change);
    }
    Ok(out)
}

/// The new assignment, then the old one removed, both through the front
/// door as dom0.
fn repoint(svc: &Service, old: &Record, new: &Record) -> Result<(), ApiError> {
    as_dom0(svc, Method::Assign, new, new.to_assignment().serialize()?.into_bytes())?;
    as_dom0(svc, Method::Unassign, old, Vec::new())
}

fn as_dom0(svc: &Service, method: Method, r: &Record, payload: Vec<u8>) -> Result<(), ApiError> {
    let request = UntrustedRequest {
        untrusted_method: method.to_string(),
        untrusted_arg: r.device_ref().to_qarg(),
        untrusted_source: QubeName::dom0().to_string(),
        untrusted_target: UntrustedTarget::Name(r.frontend.to_string()),
        untrusted_payload: payload,
    };
    match svc.handle(Ok(request)) {
        Reply::Ok(_) => Ok(()),
        Reply::Err { message, .. } | Reply::Named { message, .. } => Err(ApiError::Qubes(message)),
    }
}
