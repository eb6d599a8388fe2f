//! `qubes-pci-admin check KIND`: the rules for the qubesd extension. The
//! extension runs inside qubesd and must never call back into it, so it
//! passes what qubesd holds in memory as one
//! [`ExtensionFacts`] object on stdin; the answer is one [`Verdict`]. Here
//! those facts become the rules' [`Facts`] (only sysfs, procfs and the
//! policy files are read), and [`decide`] answers.

use qubes_pci_rpc::extension::{AssignmentFact, ExtensionFacts, Verdict};
use qubes_pci_rpc::{
    options, AssignmentMode, DeviceId, DeviceRef, PciOptions, PciPath, QubeName, QubeRef, Target, Wild,
};

use crate::error::ApiError;
use crate::rules::{decide, Decision, Dest, Facts, Kind as Rule, Record, Setting, VirtMode};
use crate::sysinfo::{DomainInfo, SystemInfo};
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

/// Runs one check: the facts, then the decision.
pub fn run(config: &Config, kind: Kind, untrusted: &ExtensionFacts) -> Result<Decision, ApiError> {
    let (rule, facts) = gather(config, kind, untrusted)?;
    decide(&rule, &facts)
}

/// The rules' facts from what qubesd holds, plus the devices at the ports
/// concerned (sysfs) and the option grants (the policy).
pub fn gather(config: &Config, kind: Kind, untrusted: &ExtensionFacts) -> Result<(Rule, Facts), ApiError> {
    let source = QubeName::parse(&untrusted.source)?;
    let name = QubeName::parse(&untrusted.dest)?;
    let virt_mode = match &untrusted.dest_virt_mode {
        None => None,
        Some(v) => Some(Setting {
            value: VirtMode::parse(v)
                .ok_or_else(|| ApiError::Value(format!("{name} has a virt_mode this check does not know: {v:?}")))?,
            explicit: !untrusted.dest_virt_mode_default,
        }),
    };
    let dest = Dest {
        admin_vm: name.is_dom0() || untrusted.dest_class.as_deref() == Some("AdminVM"),
        virt_mode,
        running: untrusted.dest_running,
        attached: untrusted
            .dest_attached
            .iter()
            .filter_map(|p| PciPath::parse(p).ok())
            .collect(),
        memory_balancing: untrusted.memory_balancing,
        memory_mb: untrusted.dest_memory,
        maxmem_mb: untrusted.dest_maxmem,
        devices_denied: untrusted.dest_devices_denied.clone(),
        name,
    };
    let stored = |facts: &[AssignmentFact]| -> Vec<Record> { facts.iter().filter_map(stored_record).collect() };
    let assignments = stored(&untrusted.assignments);
    let running = stored(&untrusted.running);
    let rule = match kind {
        Kind::Assign => Rule::Assign(requested(&dest.name, untrusted)?),
        Kind::SetMode => Rule::SetMode(requested(&dest.name, untrusted)?),
        Kind::Attach => Rule::Attach(device(untrusted)?.0),
        Kind::Detach => Rule::Detach(device(untrusted)?.0),
        Kind::Start => Rule::Start,
    };
    let ports: Vec<&PciPath> = match &rule {
        Rule::Assign(r) | Rule::SetMode(r) => vec![&r.port],
        Rule::Start => assignments
            .iter()
            .filter(|r| r.frontend == dest.name && r.mode == AssignmentMode::Required)
            .map(|r| &r.port)
            .collect(),
        Rule::Unassign | Rule::Attach(_) | Rule::Detach(_) => Vec::new(),
    };
    let present = crate::gather::present(&config.sysfs, &config.procfs, &ports)?;
    let wanted = match &rule {
        Rule::Assign(r) => r.options,
        _ => PciOptions::default(),
    };
    let system = system_info(untrusted);
    let dirs = config.policy_dirs();
    let target = Target::Qube(QubeRef::Name(dest.name.clone()));
    let grants = crate::gather::grants(
        || {
            crate::policy::Policy::load_dirs(&dirs)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string())
        },
        &system,
        &source,
        &target,
        wanted,
    );
    let hidden = match rule {
        Rule::Start => crate::gather::hidden(&config.sysfs, &config.procfs)?,
        _ => None,
    };
    let facts = Facts {
        source,
        dest,
        present,
        assignments,
        running,
        grants,
        hidden,
    };
    Ok((rule, facts))
}

/// The device the event names, with its port.
fn device(untrusted: &ExtensionFacts) -> Result<(PciPath, Wild<DeviceId>), ApiError> {
    let d = untrusted
        .device
        .as_ref()
        .ok_or_else(|| ApiError::Protocol("the facts name no device".into()))?;
    if !QubeName::parse(&d.backend).is_ok_and(|b| b.is_dom0()) {
        return Err(ApiError::DeviceNotFound(format!(
            "PCI devices belong to dom0, not {}",
            qubes_pci_rpc::device::sanitize_value(&d.backend)
        )));
    }
    let port = PciPath::parse(&d.port).map_err(|_| {
        ApiError::DeviceNotFound(format!(
            "name the PCI device by its port id, such as dom0:00_14.0 (`qvm-pci` lists them), not {:?}",
            qubes_pci_rpc::device::sanitize_value(&d.port)
        ))
    })?;
    Ok((port, wild_id(&d.device_id)?))
}

/// What the event asks for. qubesd stores option values as given and
/// turns an option on for any non-empty value, so only `True` is taken:
/// `False`, `0` or `no` would be stored and turn the option on.
fn requested(dest: &QubeName, untrusted: &ExtensionFacts) -> Result<Record, ApiError> {
    let (port, device_id) = device(untrusted)?;
    for (name, value) in &untrusted.options {
        if options::ALL.contains(&name.as_str()) && value != "True" {
            return Err(ApiError::Value(format!(
                "option {name}={} would turn {name} on: qubesd stores the value as given, and any non-empty \
                 value turns the option on. Give {name}=True to turn it on; to leave it off, leave the option out",
                qubes_pci_rpc::device::sanitize_value(value)
            )));
        }
    }
    let pairs: Vec<(String, String)> = untrusted.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let device = DeviceRef {
        backend: QubeName::dom0(),
        port: Wild::Is(port),
        device_id,
    };
    let mode = AssignmentMode::parse(untrusted.mode.as_deref().unwrap_or("manual"))?;
    Record::requested(dest.clone(), &device, mode, &pairs).map_err(|e| ApiError::Value(e.to_string()))
}

/// An assignment qubesd holds, as the rules see it; `None` for what names
/// no dom0 PCI device by port (it cannot clash with one).
fn stored_record(a: &AssignmentFact) -> Option<Record> {
    let assignment = qubes_pci_rpc::Assignment {
        device: DeviceRef {
            backend: QubeName::parse(&a.backend).ok()?,
            port: Wild::Is(PciPath::parse(&a.port).ok()?),
            device_id: wild_id(&a.device_id).ok()?,
        },
        frontend: None,
        mode: AssignmentMode::parse(&a.mode).ok()?,
        options: a.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    Record::stored(QubeName::parse(&a.qube).ok()?, &assignment)
}

fn wild_id(s: &str) -> Result<Wild<DeviceId>, ApiError> {
    Ok(match s {
        "*" | "" => Wild::Any,
        d => Wild::Is(DeviceId::parse(d)?),
    })
}

/// The qubes the extension described, as the policy reads system info.
fn system_info(untrusted: &ExtensionFacts) -> SystemInfo {
    SystemInfo {
        domains: untrusted
            .system
            .iter()
            .map(|(name, q)| {
                (
                    name.clone(),
                    DomainInfo {
                        klass: q.class.clone(),
                        tags: q.tags.clone(),
                        power_state: q.power_state.clone(),
                        uuid: q.uuid.clone(),
                        ..DomainInfo::default()
                    },
                )
            })
            .collect(),
    }
}

/// The daemon's method for the extension's rule checks, in qrexec's
/// socket-service framing (`qubes-pci-admin.Check+KIND dom0 keyword
/// adminvm`, a NUL, the facts). qrexec never routes it: only a process in
/// dom0 that can open the daemon's socket can ask, and a check changes
/// nothing.
pub const CHECK_METHOD: &str = "qubes-pci-admin.Check";

/// The largest facts document read from the extension by `check`.
pub const MAX_FACTS: usize = 16 << 20;

/// One check from the extension's JSON facts: the verdict, and whether the
/// facts could be read (a verdict refusing them otherwise).
pub fn check_json(config: &Config, kind: Kind, untrusted: &[u8]) -> (Verdict, bool) {
    if untrusted.len() > MAX_FACTS {
        return (
            Verdict::refuse("QubesException", "the facts are too large".into()),
            false,
        );
    }
    match serde_json::from_slice::<ExtensionFacts>(untrusted) {
        Ok(facts) => (verdict(&run(config, kind, &facts)), true),
        Err(e) => (
            Verdict::refuse(
                "QubesException",
                format!("qubes-pci-admin could not read the facts of this call ({e}); refused"),
            ),
            false,
        ),
    }
}

/// The daemon's answer to a [`CHECK_METHOD`] call: `0`, a NUL and the
/// verdict as JSON. A call from anything but dom0, or of a kind this
/// build does not know, is refused with a typed error (the extension
/// then asks the binary).
pub fn answer_check(config: &Config, untrusted_arg: &str, untrusted_source: &str, untrusted_facts: &[u8]) -> Vec<u8> {
    use clap::ValueEnum;
    use qubes_pci_rpc::{ExceptionKind, Reply};
    if untrusted_source != "dom0" {
        return Reply::error(ExceptionKind::PermissionDenied, "rule checks are for qubesd in dom0").encode();
    }
    let Ok(kind) = Kind::from_str(untrusted_arg, false) else {
        return Reply::error(ExceptionKind::ProtocolError, "unknown rule check").encode();
    };
    let (verdict, _) = check_json(config, kind, untrusted_facts);
    let mut out = b"0\0".to_vec();
    // A verdict always serialises (strings and a bool); should it not, the
    // empty object is no verdict and the extension asks the binary.
    let _ = serde_json::to_writer(&mut out, &verdict);
    out
}

/// The answer for the extension.
pub fn verdict(result: &Result<Decision, ApiError>) -> Verdict {
    match result {
        Ok(decision) => {
            for w in &decision.warnings {
                tracing::warn!("{w}");
            }
            Verdict::allow()
        }
        Err(e) => {
            let reply = e.to_reply();
            Verdict::refuse(reply.exception_name().unwrap_or("QubesException"), e.to_string())
        }
    }
}
