//! The PCI passthrough rules, as one pure function of [`Facts`]: what may be
//! assigned where, which mode takes effect, and what a qube may take when
//! it starts. Nothing here reads anything or logs; the paths gather the
//! facts, call [`decide`], and act on (and log) its decision.

use qubes_pci_rpc::{AssignmentMode, PciOptions, PciPath, QubeName};

use super::facts::{Dest, Facts, Present, VirtMode};
use super::Record;
use crate::error::ApiError;

/// The policy service that must also allow turning an option on.
pub const OPTION_SERVICE: &str = "admin.vm.device.pci.Option";

/// What is being decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Assign this record to its frontend (also: assign-defaults).
    Assign(Record),
    /// Change the mode of a stored assignment: the record as it would be.
    SetMode(Record),
    /// Remove an assignment: always possible, whether or not the device is
    /// still there.
    Unassign,
    /// Hot-plug the device at the port into the destination.
    Attach(PciPath),
    /// Take the device at the port out of the destination.
    Detach(PciPath),
    /// The destination starts with its `required` assignments (taken from
    /// [`Facts::assignments`]).
    Start,
}

/// How an Assign relates to what the destination already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No assignment of this device (same port and device id) yet.
    New,
    /// The same assignment exists: qubesd answers `DeviceAlreadyAssigned`.
    Identical,
    /// Same options, another mode: one `Set.assignment`.
    Mode { before: Record },
    /// Other options: qubesd has no call to change them, so the old
    /// assignment is replaced (and restored if the new one fails).
    Replace { before: Record },
    /// Nothing the rules object to; qubesd answers as it does.
    Proceed,
}

/// A decision: the plan, and what dom0's journal should note about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub plan: Plan,
    pub warnings: Vec<String>,
}

impl Decision {
    fn proceed() -> Decision {
        Decision {
            plan: Plan::Proceed,
            warnings: Vec::new(),
        }
    }
}

/// The one decision every path makes: the front door, the dom0 commands
/// and the qubesd extension.
pub fn decide(kind: &Kind, facts: &Facts) -> Result<Decision, ApiError> {
    match kind {
        Kind::Assign(new) => assign(new, facts),
        Kind::SetMode(new) => set_mode(new, facts),
        Kind::Unassign => Ok(Decision::proceed()),
        Kind::Attach(port) if facts.dest.running => Err(no_hotplug(&facts.dest.name, port)),
        Kind::Detach(port) if facts.dest.running && facts.dest.attached.contains(port) => {
            Err(no_detach(&facts.dest.name, port))
        }
        Kind::Attach(_) | Kind::Detach(_) => Ok(Decision::proceed()),
        Kind::Start => start(facts),
    }
}

fn assign(new: &Record, facts: &Facts) -> Result<Decision, ApiError> {
    let name = new.device_name();
    required_only(new.mode, &facts.dest.name, &name)?;
    takes_pci(facts, &name)?;
    if let Some(twin) = facts
        .assignments
        .iter()
        .find(|r| r.frontend == new.frontend && r.port == new.port && !r.same_key(new))
    {
        return Err(ApiError::AlreadyAssigned(format!(
            "PCI device dom0:{} is already assigned to {} as {}; a device twice in one qube makes libvirt refuse \
             its start (\"Hostdev already exists\"). Change that assignment instead (`qvm-pci unassign {} {}`, \
             then assign again)",
            new.port,
            new.frontend,
            twin.device_name(),
            new.frontend,
            twin.device_name()
        )));
    }
    let before = facts.assignments.iter().find(|r| r.same_key(new)).cloned();
    let plan = match before {
        None => Plan::New,
        Some(b) if b.options == new.options && b.mode == new.mode => {
            return Ok(Decision {
                plan: Plan::Identical,
                warnings: Vec::new(),
            })
        }
        Some(b) if b.options == new.options => Plan::Mode { before: b },
        Some(b) => Plan::Replace { before: b },
    };
    let mut warnings = device_may_go(new, facts)?;
    let had = match &plan {
        Plan::Mode { before } | Plan::Replace { before } => before.options,
        _ => PciOptions::default(),
    };
    for option in new.options.newly_enabled(had) {
        if !granted(facts.grants, option) {
            return Err(option_denied(&facts.source, &facts.dest.name, option));
        }
    }
    let others: Vec<&str> = facts
        .assignments
        .iter()
        .filter(|r| r.frontend != new.frontend && r.port == new.port)
        .map(|r| r.frontend.as_str())
        .collect();
    if !others.is_empty() {
        warnings.push(format!(
            "PCI device {name} is now assigned to several qubes ({} and {}); only one of them can run at a time",
            new.frontend,
            others.join(", ")
        ));
    }
    Ok(Decision { plan, warnings })
}

/// `Set.assignment`: only `required` takes effect for PCI, and turning an
/// assignment into `required` meets every rule an Assign meets (a record
/// made before this service was installed may name a bridge).
fn set_mode(new: &Record, facts: &Facts) -> Result<Decision, ApiError> {
    let name = new.device_name();
    required_only(new.mode, &facts.dest.name, &name)?;
    takes_pci(facts, &name)?;
    let warnings = device_may_go(new, facts)?;
    Ok(Decision {
        plan: Plan::Proceed,
        warnings,
    })
}

fn granted(grants: PciOptions, option: &str) -> bool {
    match option {
        qubes_pci_rpc::options::NO_STRICT_RESET => grants.no_strict_reset,
        qubes_pci_rpc::options::PERMISSIVE => grants.permissive,
        _ => false,
    }
}

/// PCI devices reach a qube only when it starts, and qubesd hands a qube
/// only its `required` PCI assignments: any other mode would be recorded
/// and never take effect.
fn required_only(mode: AssignmentMode, qube: &QubeName, device: &str) -> Result<(), ApiError> {
    if mode == AssignmentMode::Required {
        return Ok(());
    }
    Err(ApiError::Value(format!(
        "PCI device {device} cannot be assigned to {qube} in mode {mode}: PCI devices reach a qube only when it \
         starts, and only as required. Assign it as required (`qvm-pci assign --required {qube} {}`)",
        short(device)
    )))
}

/// `dom0:PORT`, as `qvm-pci` takes a device.
fn short(device: &str) -> String {
    device.splitn(3, ':').take(2).collect::<Vec<_>>().join(":")
}

/// The destination can take PCI devices: it is not dom0, and pvh was not
/// set on it explicitly (qubesd's default turns hvm with the first PCI
/// assignment).
fn takes_pci(facts: &Facts, device: &str) -> Result<(), ApiError> {
    let qube = &facts.dest.name;
    if facts.dest.admin_vm {
        return Err(ApiError::Qubes(format!(
            "cannot assign PCI device {device} to dom0: dom0 already has every device it has not given away; \
             assign it to a qube instead"
        )));
    }
    let explicit_pvh = facts
        .dest
        .virt_mode
        .is_some_and(|v| v.explicit && v.value == VirtMode::Pvh);
    if explicit_pvh {
        return Err(ApiError::Qubes(format!(
            "cannot assign PCI device {device} to {qube}: {qube} is set to run in pvh mode, which has no PCI \
             passthrough; run `qvm-prefs {qube} virt_mode hvm` (or `qvm-prefs --default {qube} virt_mode`) \
             first, then assign again"
        )));
    }
    Ok(())
}

/// The device of `new` may leave dom0 for `new.frontend`: it is present
/// with that identity, it is not a bridge, dom0 does not use it (or dom0
/// itself asks, with a warning), and no other function of it goes to
/// another qube unless both carry `no-strict-reset`.
fn device_may_go(new: &Record, facts: &Facts) -> Result<Vec<String>, ApiError> {
    let qube = &new.frontend;
    let port = &new.port;
    let Some(Present { device: dev, dom0_uses }) = facts.at(port) else {
        return Err(ApiError::DeviceNotFound(format!(
            "there is no PCI device at port {port} in dom0, so it cannot be assigned to {qube}; \
             `qvm-pci` lists the devices present (an assignment whose device is gone can still be unassigned)"
        )));
    };
    let live = dev.device_id();
    if !new.device_id.matches(&live) {
        return Err(ApiError::DeviceNotFound(format!(
            "the device at port {port} ({}) is {live}, not {}: the hardware changed or the port id is wrong; \
             nothing was assigned to {qube}. Check `qvm-pci` and assign the device you mean",
            dev.sbdf, new.device_id
        )));
    }
    if let Some(kind) = dev.bridge_kind() {
        return Err(ApiError::Value(format!(
            "dom0:{port} ({}) is a {kind}; bridges carry other devices and stay in dom0, so it cannot be assigned \
             to {qube}. Assign the device behind it instead",
            dev.sbdf
        )));
    }
    denied(&facts.dest, port, &dev.interface().to_string())?;
    let mut warnings = Vec::new();
    if !dom0_uses.is_empty() {
        let why: Vec<&str> = dom0_uses.iter().map(|u| u.what).collect();
        if !facts.from_dom0() {
            return Err(ApiError::Value(format!(
                "dom0:{port} ({}) cannot be assigned to {qube} at a qube's request: dom0 itself uses it ({}), \
                 and it would leave dom0 when {qube} starts. A dom0 administrator who means it can assign it \
                 from dom0 (`qvm-pci assign --required {qube} dom0:{port}`)",
                dev.sbdf,
                why.join("; "),
            )));
        }
        warnings.push(format!(
            "dom0 assigns a PCI device dom0 itself uses ({}: {}); it leaves dom0 when {qube} starts",
            dev.sbdf,
            why.join("; ")
        ));
    }
    let clash = facts.assignments.iter().find(|r| {
        r.frontend != new.frontend
            && r.port.is_sibling(port)
            && !(r.options.no_strict_reset && new.options.no_strict_reset)
    });
    if let Some(r) = clash {
        return Err(ApiError::Value(format!(
            "cannot assign PCI device {} to {qube}: it is a function of the same physical device as {}, which is \
             assigned to {}, and the functions of one device share its reset. Assign all functions to one qube \
             (`qvm-pci unassign {} dom0:{}`, then assign it to {qube}), or, if you accept that a reset of one \
             qube's function may disturb the other, give both assignments -o no-strict-reset=True",
            new.device_name(),
            r.device_name(),
            r.frontend,
            r.frontend,
            r.port,
        )));
    }
    Ok(warnings)
}

/// How much a problem of a start matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The start is refused (or would fail).
    Error,
    /// The qube starts, weakened or at a risk worth knowing.
    Warning,
}

/// One problem of a qube's start, with what to do about it.
#[derive(Debug)]
pub struct Problem {
    /// A stable token: `device-missing`, `identity-mismatch`, `no-reset`,
    /// `shared-function`, `in-use`, `dom0-uses`, `pvh`, `duplicate`,
    /// `bridge`, `memory-over-3.5g`, `not-hidden`.
    pub code: &'static str,
    pub severity: Severity,
    /// The device concerned, if any.
    pub port: Option<PciPath>,
    /// The refusal the start meets (its text says what to do).
    pub refusal: ApiError,
}

/// HVMs with PCI devices are known to crash with more memory than this
/// (qubes-issues #4321, #7624).
const PCI_HVM_MEMORY_MB: u64 = 3584;

/// Every problem that would stop the destination's start with its
/// `required` assignments, or weaken it: what [`Kind::Start`] refuses on
/// (the first error) and what `preflight` lists.
pub fn start_problems(facts: &Facts) -> Vec<Problem> {
    let qube = &facts.dest.name;
    let mem = if facts.dest.memory_balancing {
        format!(
            " Note: {qube} has memory balancing on, which a qube with PCI devices cannot use: it gets only its \
             initial memory (set `qvm-prefs {qube} maxmem 0` to make that explicit)."
        )
    } else {
        String::new()
    };
    let mut out = Vec::new();
    let mut problem = |code, severity, port: Option<&PciPath>, refusal| {
        out.push(Problem {
            code,
            severity,
            port: port.cloned(),
            refusal,
        })
    };
    let required: Vec<&Record> = facts
        .assignments
        .iter()
        .filter(|r| &r.frontend == qube && r.mode == AssignmentMode::Required)
        .collect();
    if required.is_empty() {
        return out;
    }
    if facts
        .dest
        .virt_mode
        .is_some_and(|v| v.explicit && v.value == VirtMode::Pvh)
    {
        problem(
            "pvh",
            Severity::Error,
            None,
            ApiError::Qubes(format!(
                "cannot start {qube} with PCI devices: it is set to run in pvh mode, which has no PCI passthrough. \
                 Run `qvm-prefs {qube} virt_mode hvm` (or `qvm-prefs --default {qube} virt_mode`)"
            )),
        );
    }
    for (i, r) in required.iter().enumerate() {
        if required.iter().take(i).any(|o| o.port == r.port) {
            problem(
                "duplicate",
                Severity::Error,
                Some(&r.port),
                ApiError::Qubes(format!(
                    "cannot start {qube}: PCI device dom0:{} is assigned to it twice (once as {}); libvirt refuses \
                     a device twice (\"Hostdev already exists\"). Unassign one (`qvm-pci unassign {qube} {}`)",
                    r.port,
                    r.device_name(),
                    r.device_name()
                )),
            );
            continue;
        }
        let Some(Present { device: dev, dom0_uses }) =
            facts.at(&r.port).filter(|p| r.device_id.matches(&p.device.device_id()))
        else {
            let (code, found) = match facts.at(&r.port) {
                Some(p) => (
                    "identity-mismatch",
                    format!("{} is there instead", p.device.device_id()),
                ),
                None => ("device-missing", "no device is there".to_owned()),
            };
            problem(
                code,
                Severity::Error,
                Some(&r.port),
                ApiError::DeviceNotFound(format!(
                    "cannot start {qube}: its required PCI device {} is not present ({found}). Connect the device, \
                     or unassign it (`qvm-pci unassign {qube} dom0:{}`) to start without it \
                     (`qubes-pci-admin reconcile` finds a device that moved).{mem}",
                    r.device_name(),
                    r.port
                )),
            );
            continue;
        };
        if let Some(kind) = dev.bridge_kind() {
            problem(
                "bridge",
                Severity::Error,
                Some(&r.port),
                ApiError::Value(format!(
                    "cannot start {qube}: its required PCI device dom0:{} ({}) is a {kind}, and bridges stay in \
                     dom0. Unassign it (`qvm-pci unassign {qube} dom0:{}`) and assign the device behind it \
                     instead.{mem}",
                    r.port, dev.sbdf, r.port
                )),
            );
            continue;
        }
        if !dom0_uses.is_empty() {
            let why: Vec<&str> = dom0_uses.iter().map(|u| u.what).collect();
            problem(
                "dom0-uses",
                Severity::Warning,
                Some(&r.port),
                ApiError::Qubes(format!(
                    "{qube} starts with dom0:{} ({}), which dom0 itself uses ({}): dom0 loses it. Unassign it \
                     (`qvm-pci unassign {qube} dom0:{}`) unless that is meant",
                    r.port,
                    dev.sbdf,
                    why.join("; "),
                    r.port
                )),
            );
        }
        if !dev.can_reset() && !r.options.no_strict_reset {
            problem(
                "no-reset",
                Severity::Error,
                Some(&r.port),
                ApiError::Qubes(format!(
                    "cannot start {qube}: PCI device dom0:{} ({}) has no reset method (no FLR, PM or bus reset: \
                     its reset_method is empty), and Xen refuses to hand over a device it cannot reset. If you \
                     accept that it may carry state between qubes, assign it with no-strict-reset \
                     (`qvm-pci unassign {qube} dom0:{}`, then `qvm-pci assign --required -o \
                     no-strict-reset=True {qube} dom0:{}`).{mem}",
                    r.port, dev.sbdf, r.port, r.port
                )),
            );
        }
        let others = facts.running.iter().filter(|h| &h.frontend != qube);
        if let Some(h) = others.clone().find(|h| h.port == r.port) {
            problem(
                "in-use",
                Severity::Error,
                Some(&r.port),
                ApiError::Qubes(format!(
                    "cannot start {qube}: PCI device {} ({}) is in use by {}, which is running; a device can be \
                     used by one running qube at a time. Shut {} down first, or unassign the device from one of \
                     them.{mem}",
                    r.device_name(),
                    dev.sbdf,
                    h.frontend,
                    h.frontend
                )),
            );
        }
        let shared_running = others
            .clone()
            .find(|h| h.port.is_sibling(&r.port) && !(h.options.no_strict_reset && r.options.no_strict_reset));
        let shared_assigned = facts.assignments.iter().find(|h| {
            &h.frontend != qube
                && h.mode == AssignmentMode::Required
                && h.port.is_sibling(&r.port)
                && !(h.options.no_strict_reset && r.options.no_strict_reset)
        });
        match (shared_running, shared_assigned) {
            (Some(h), _) => problem(
                "shared-function",
                Severity::Error,
                Some(&r.port),
                ApiError::Qubes(format!(
                    "cannot start {qube}: PCI device {} ({}) is a function of the same physical device as dom0:{}, \
                     which {} is using, and resetting one function resets both. Shut {} down first, assign all \
                     functions to one qube, or give both assignments -o no-strict-reset=True.{mem}",
                    r.device_name(),
                    dev.sbdf,
                    h.port,
                    h.frontend,
                    h.frontend
                )),
            ),
            (None, Some(h)) => problem(
                "shared-function",
                Severity::Warning,
                Some(&r.port),
                ApiError::Qubes(format!(
                    "PCI device dom0:{} is a function of the same physical device as dom0:{}, which {} requires: \
                     whichever of the two starts second is refused. Assign all functions to one qube, or give both \
                     assignments -o no-strict-reset=True",
                    r.port, h.port, h.frontend
                )),
            ),
            (None, None) => {}
        }
        if let Some(hidden) = &facts.hidden {
            if !hidden.sbdfs.contains(&dev.sbdf) {
                problem(
                    "not-hidden",
                    Severity::Warning,
                    Some(&r.port),
                    ApiError::Qubes(format!(
                        "dom0:{} ({}) is not hidden from dom0's drivers at boot, so dom0 uses it until {qube} starts \
                         (and may hold state in it): add it to rd.qubes.hide_pci= on dom0's kernel command line \
                         (`qubes-pci-admin hide-list` prints the option)",
                        r.port, dev.sbdf
                    )),
                );
            }
        }
    }
    let hvm = facts.dest.virt_mode.is_none_or(|v| v.value == VirtMode::Hvm);
    let most = facts.dest.memory_mb.max(facts.dest.maxmem_mb).unwrap_or(0);
    if hvm && most > PCI_HVM_MEMORY_MB {
        problem(
            "memory-over-3.5g",
            Severity::Warning,
            None,
            ApiError::Qubes(format!(
                "{qube} is an HVM with PCI devices and up to {most} MB of memory: such qubes are known to crash above \
                 about 3.5 GB (qubes-issues #4321). If it does, `qvm-prefs {qube} memory 3584` and `qvm-prefs \
                 {qube} maxmem 0`"
            )),
        );
    }
    out
}

/// Whether the destination may start now: refused on the first error of
/// [`start_problems`], with the warnings noted.
fn start(facts: &Facts) -> Result<Decision, ApiError> {
    let mut warnings = Vec::new();
    for p in start_problems(facts) {
        match p.severity {
            Severity::Error => return Err(p.refusal),
            Severity::Warning => warnings.push(p.refusal.to_string()),
        }
    }
    Ok(Decision {
        plan: Plan::Proceed,
        warnings,
    })
}

/// The destination's `devices_denied` list (R4.3) holds for PCI
/// assignments too (upstream checks it only for Attach).
fn denied(dest: &Dest, port: &PciPath, interface: &str) -> Result<(), ApiError> {
    match dest.denied_by(interface) {
        None => Ok(()),
        Some(pattern) => Err(ApiError::PermissionDenied {
            message: format!(
                "PCI device dom0:{port} (interface {interface}) cannot be assigned to {}: its devices_denied list \
                 has {pattern}. A dom0 administrator can remove it (`qvm-device {} deny --revoke …`) or assign \
                 another device",
                dest.name, dest.name
            ),
            skippable: false,
        }),
    }
}

/// The refusal of an option the policy does not grant.
fn option_denied(source: &QubeName, target: &QubeName, name: &str) -> ApiError {
    ApiError::PermissionDenied {
        message: format!(
            "setting {name} on a PCI assignment weakens isolation, and dom0's qrexec policy does not allow \
             {OPTION_SERVICE}+{name} from {source} to {target}; nothing was changed. A dom0 administrator can \
             allow it in the policy, or assign without the option"
        ),
        skippable: false,
    }
}

/// Attach into a running qube is a hot-plug, which PCI passthrough here
/// never does.
fn no_hotplug(qube: &QubeName, port: &PciPath) -> ApiError {
    ApiError::NotHalted(format!(
        "cannot attach PCI device dom0:{port} to {qube} while it runs: PCI devices are handed to a qube only \
         when it starts (no hot-plug). Assign it (`qvm-pci assign --required {qube} dom0:{port}`), then restart \
         {qube}"
    ))
}

/// Detaching from a running qube would hand the device back to dom0.
fn no_detach(qube: &QubeName, port: &PciPath) -> ApiError {
    ApiError::NotHalted(format!(
        "cannot detach PCI device dom0:{port} from {qube} while it runs: PCI devices leave a qube only when it \
         stops, and a detached device is never handed back to dom0. Unassign it (`qvm-pci unassign {qube} \
         dom0:{port}`) and shut {qube} down"
    ))
}
