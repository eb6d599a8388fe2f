//! A qube's start and stop: `prepare-start` checks that the qube may take
//! its devices now, hands them to pciback and records the holds;
//! `release` drops them.

use std::fmt::Write as _;

use qubes_pci_rpc::{AssignmentMode, QubeName};

use crate::error::ApiError;
use crate::pci::{bind, Inventory, PciDevice};
use crate::store::{Hold, Record, State, Store};
use crate::sysinfo::SystemInfo;
use crate::Config;

/// What `prepare-start` did.
#[derive(Debug, Default)]
pub struct StartReport {
    /// The devices handed to the qube, with what was written to sysfs.
    pub attached: Vec<(Hold, Vec<String>)>,
    /// Assignments not attached at this start, and why.
    pub skipped: Vec<String>,
    /// Stale holds (qubes no longer running) that were dropped.
    pub stale: Vec<Hold>,
    pub memory_balancing: bool,
}

impl StartReport {
    /// The libvirt `<hostdev>` elements for the attached devices.
    pub fn hostdev_xml(&self) -> String {
        let mut out = String::new();
        for (h, _) in &self.attached {
            let _ =
                writeln!(
                out,
                "<hostdev type='pci' managed='yes'{}>\n  <source{}>\n    <address domain='0x{:04x}' bus='0x{:02x}' \
                 slot='0x{:02x}' function='0x{:x}'/>\n  </source>\n</hostdev>",
                if h.options.no_strict_reset { " nostrictreset='yes'" } else { "" },
                if h.options.permissive { " writeFiltering='no'" } else { "" },
                h.sbdf.segment,
                h.sbdf.bus,
                h.sbdf.device,
                h.sbdf.function,
            );
        }
        out
    }
}

fn memory_note(qube: &str, on: bool) -> String {
    if on {
        format!(
            " Note: {qube} has memory balancing on, which a qube with PCI devices cannot use: it gets only its \
             initial memory (set `qvm-prefs {qube} maxmem 0` to make that explicit)."
        )
    } else {
        String::new()
    }
}

/// Checks and performs the start of `qube`: every `required` device must be
/// present and free, `auto-attach` devices are taken when they are,
/// `ask-to-attach` ones are left (nobody can be asked at start).
/// With `bind_devices` false nothing is written to sysfs (a check, or a
/// demonstration on a machine whose drivers must stay as they are); the
/// holds are recorded all the same.
pub fn prepare_start(
    config: &Config,
    system: &SystemInfo,
    qube: &QubeName,
    bind_devices: bool,
) -> Result<StartReport, ApiError> {
    let Some((_, info)) = system.get(qube.as_str()) else {
        return Err(ApiError::NoSuchQube(qube.to_string()));
    };
    if qube.is_dom0() {
        return Err(ApiError::Qubes(
            "dom0 is not started by libvirt; nothing to prepare".into(),
        ));
    }
    let memory_balancing = info.memory_balancing == Some(true);
    let inventory = Inventory::scan(&config.sysfs)?;
    Store::new(&config.state_dir).update(|state| {
        let mut report = StartReport {
            memory_balancing,
            ..StartReport::default()
        };
        let (stale, live): (Vec<Hold>, Vec<Hold>) = std::mem::take(&mut state.holds)
            .into_iter()
            .partition(|h| &h.qube == qube || !system.get(h.qube.as_str()).is_some_and(|(_, i)| i.is_running()));
        state.holds = live;
        report.stale = stale.into_iter().filter(|h| &h.qube != qube).collect();
        let mut plan: Vec<(Record, PciDevice)> = Vec::new();
        for r in state.assigned_to(qube) {
            match take(state, &inventory, r, memory_balancing) {
                Ok(dev) => plan.push((r.clone(), dev.clone())),
                Err(e) if r.mode == AssignmentMode::Required => return Err(e),
                Err(e) => report.skipped.push(format!("{} ({}): {e}", r.device_name(), r.mode)),
            }
        }
        for (r, dev) in plan {
            let done = if bind_devices {
                bind::bind_to_pciback(&config.sysfs, &dev)
                    .map_err(|e| ApiError::Qubes(format!("cannot start {qube} with {}: {e}", r.device_name())))?
            } else {
                vec![format!("{} left with its driver (--no-bind)", dev.sbdf)]
            };
            let hold = Hold {
                qube: qube.clone(),
                port: r.port.clone(),
                sbdf: dev.sbdf,
                device_id: dev.device_id(),
                options: r.options,
            };
            state.holds.push(hold.clone());
            report.attached.push((hold, done));
        }
        Ok(report)
    })
}

/// Whether `qube` may take the device of `r` now; the live device if so.
fn take<'a>(
    state: &State,
    inventory: &'a Inventory,
    r: &Record,
    memory_balancing: bool,
) -> Result<&'a PciDevice, ApiError> {
    let qube = &r.frontend;
    let mem = memory_note(qube.as_str(), memory_balancing);
    if r.mode == AssignmentMode::AskToAttach {
        return Err(ApiError::Qubes(
            "ask-to-attach devices are not attached at start (nobody can be asked); assign it as required".into(),
        ));
    }
    let dev = inventory
        .by_port(&r.port)
        .filter(|d| r.device_id.matches(&d.device_id()))
        .ok_or_else(|| {
            let found = inventory.by_port(&r.port).map_or("no device is there".to_owned(), |d| {
                format!("{} is there instead", d.device_id())
            });
            ApiError::DeviceNotFound(format!(
                "cannot start {qube}: its required PCI device {} is not present ({found}). Connect the device, \
                 or unassign it (`qvm-pci unassign {qube} dom0:{}`) to start without it.{mem}",
                r.device_name(),
                r.port
            ))
        })?;
    if let Some(h) = state.holds.iter().find(|h| h.port == r.port && &h.qube != qube) {
        return Err(ApiError::Qubes(format!(
            "cannot start {qube}: PCI device {} ({}) is in use by {}, which is running; a device can be used by \
             one running qube at a time. Shut {} down first, or unassign the device from one of them.{mem}",
            r.device_name(),
            dev.sbdf,
            h.qube,
            h.qube
        )));
    }
    if let Some(h) = state.holds.iter().find(|h| {
        &h.qube != qube && h.port.is_sibling(&r.port) && !(h.options.no_strict_reset && r.options.no_strict_reset)
    }) {
        return Err(ApiError::Qubes(format!(
            "cannot start {qube}: PCI device {} ({}) is a function of the same physical device as dom0:{} \
             ({}), which {} is using, and resetting one function resets both. Shut {} down first, assign all \
             functions to one qube, or give both assignments -o no-strict-reset=True.{mem}",
            r.device_name(),
            dev.sbdf,
            h.port,
            h.sbdf,
            h.qube,
            h.qube
        )));
    }
    Ok(dev)
}

/// Drops the holds of `qube` (it stopped). The devices stay on pciback.
pub fn release(config: &Config, qube: &QubeName) -> Result<Vec<Hold>, ApiError> {
    Store::new(&config.state_dir).update(|state| {
        let (gone, kept): (Vec<Hold>, Vec<Hold>) = std::mem::take(&mut state.holds)
            .into_iter()
            .partition(|h| &h.qube == qube);
        state.holds = kept;
        Ok::<_, ApiError>(gone)
    })
}
