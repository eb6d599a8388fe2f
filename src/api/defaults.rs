//! `assign-defaults`: network controllers to the net qube and USB
//! controllers to the USB qube, as the Qubes installer does. Options stay
//! off: they weaken isolation and are only ever set explicitly.
//!
//! The installer creates sys-net and sys-usb each only if asked to, so a
//! default qube that does not exist skips its class with a note; a qube
//! named on the command line must exist; `none` skips a class on purpose.

use qubes_pci_rpc::{AssignmentMode, Method, PciOptions, QubeName, Reply, UntrustedRequest, UntrustedTarget, Wild};

use super::facts::{gather, Needs};
use super::{Arg, Call, Service};
use crate::error::ApiError;
use crate::rules::{decide, is_network, is_usb, Kind, Record};

/// Who gets a class of controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// The installer's qube (sys-net, sys-usb): skipped when it does not exist.
    Default(QubeName),
    /// A qube named by the administrator: it must exist.
    Named(QubeName),
    /// `none`: leave this class as it is.
    Nobody,
}

impl Recipient {
    /// `--net`/`--usb`: absent means the installer's qube, `none` nobody.
    pub fn parse(given: Option<&str>, default: &str) -> Result<Recipient, ApiError> {
        Ok(match given {
            None => Recipient::Default(QubeName::parse(default)?),
            Some("none") => Recipient::Nobody,
            Some(name) => Recipient::Named(QubeName::parse(name)?),
        })
    }
}

/// A class of controllers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Network,
    Usb,
}

impl Class {
    fn of(d: &crate::pci::PciDevice) -> Option<Class> {
        if is_network(d) {
            Some(Class::Network)
        } else if is_usb(d) {
            Some(Class::Usb)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Network => "network",
            Class::Usb => "USB",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Class::Network => "--net",
            Class::Usb => "--usb",
        }
    }
}

/// What happened to one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    pub device: String,
    pub sbdf: String,
    /// `None` when its class was skipped (no qube to give it to).
    pub qube: Option<String>,
    /// `assigned`, `would assign` (dry run), `already assigned`, `skipped`.
    pub outcome: String,
    pub detail: String,
    /// Skipped because the administrator said `none`.
    #[serde(skip)]
    pub on_purpose: bool,
}

/// Why a class of controllers is skipped.
#[derive(Debug, Clone)]
struct Skip {
    why: String,
    on_purpose: bool,
}

/// Every controller's line, and a note for each class skipped whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<Line>,
    pub notes: Vec<String>,
}

impl Report {
    /// Something was done (or would be, or already was), or nothing needed
    /// doing: no controller was left out for want of its default qube
    /// (left out with `none` is on purpose; refused by the rules is
    /// reported on its line).
    pub fn succeeded(&self) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l.outcome.as_str(), "assigned" | "would assign" | "already assigned"))
            || !self.lines.iter().any(|l| l.qube.is_none() && !l.on_purpose)
    }
}

/// Assigns (or with `dry_run`, checks) every network and USB controller
/// that nothing is assigned to yet, each through the front door as dom0,
/// so the same rules apply and qubesd records it.
pub fn assign_defaults(svc: &Service, net: &Recipient, usb: &Recipient, dry_run: bool) -> Result<Report, ApiError> {
    let system = svc.sources.system_info()?;
    let mut report = Report::default();
    let mut to = |class: Class, who: &Recipient| -> Result<Result<QubeName, Skip>, ApiError> {
        let flag = class.flag();
        let skip = match who {
            Recipient::Nobody => Skip {
                why: format!("{} controllers are left as they are ({flag} none)", class.name()),
                on_purpose: true,
            },
            Recipient::Named(q) if system.get(q.as_str()).is_none() => {
                return Err(ApiError::NoSuchQube(format!(
                    "{q} (create it first, or name another qube with {flag})"
                )))
            }
            Recipient::Default(q) if system.get(q.as_str()).is_none() => Skip {
                why: format!(
                    "{} controllers are skipped: there is no {q} (create it, or name a qube with {flag} QUBE; \
                     {flag} none says you mean it)",
                    class.name()
                ),
                on_purpose: false,
            },
            Recipient::Named(q) | Recipient::Default(q) => return Ok(Ok(q.clone())),
        };
        report.notes.push(skip.why.clone());
        Ok(Err(skip))
    };
    let net = to(Class::Network, net)?;
    let usb = to(Class::Usb, usb)?;
    let inventory = crate::pci::Inventory::scan(&svc.sources.config.sysfs)?;
    let assigned = svc.sources.qubes_xml()?.records();
    for d in &inventory.devices {
        let Some(class) = Class::of(d) else { continue };
        let device = Record {
            frontend: QubeName::dom0(),
            port: d.port.clone(),
            device_id: Wild::Is(d.device_id()),
            mode: AssignmentMode::Required,
            options: PciOptions::default(),
        };
        let line = |qube: Option<&QubeName>, outcome: &str, detail: String| Line {
            device: device.device_name(),
            sbdf: d.sbdf.to_string(),
            qube: qube.map(ToString::to_string),
            outcome: outcome.to_owned(),
            detail,
            on_purpose: false,
        };
        let qube = match (class, &net, &usb) {
            (Class::Network, Ok(q), _) | (Class::Usb, _, Ok(q)) => q,
            (Class::Network, Err(skip), _) | (Class::Usb, _, Err(skip)) => {
                report.lines.push(Line {
                    on_purpose: skip.on_purpose,
                    ..line(None, "skipped", skip.why.clone())
                });
                continue;
            }
        };
        let existing: Vec<&str> = assigned
            .iter()
            .filter(|r| r.port == d.port)
            .map(|r| r.frontend.as_str())
            .collect();
        if !existing.is_empty() {
            report.lines.push(line(
                Some(qube),
                "already assigned",
                format!("to {}; left as it is", existing.join(", ")),
            ));
            continue;
        }
        let record = Record {
            frontend: qube.clone(),
            ..device.clone()
        };
        let result = if dry_run {
            check_only(svc, &record).map(|()| "would assign")
        } else {
            assign_as_dom0(svc, &record).map(|()| "assigned")
        };
        report.lines.push(match result {
            Ok(outcome) => line(Some(qube), outcome, String::new()),
            Err(e) => line(Some(qube), "skipped", e.to_string()),
        });
    }
    Ok(report)
}

/// The Assign a dom0 administrator would send for `record`.
fn request(record: &Record) -> Result<UntrustedRequest, ApiError> {
    Ok(UntrustedRequest {
        untrusted_method: Method::Assign.to_string(),
        untrusted_arg: record.device_ref().to_qarg(),
        untrusted_source: QubeName::dom0().to_string(),
        untrusted_target: UntrustedTarget::Name(record.frontend.to_string()),
        untrusted_payload: record.to_assignment().serialize()?.into_bytes(),
    })
}

/// The decision that Assign would meet, on the front door's facts.
fn check_only(svc: &Service, record: &Record) -> Result<(), ApiError> {
    let req = request(record)?.validate()?;
    let system = svc.sources.system_info()?;
    let call = Call {
        arg: Arg::Device(record.device_ref()),
        req,
        system,
        dest: record.frontend.clone(),
    };
    let facts = gather(
        &svc.sources,
        &call,
        Needs {
            ports: &[&record.port],
            virt_mode: true,
            denied: true,
            assignments: true,
            ..Needs::default()
        },
    )?;
    decide(&Kind::Assign(record.clone()), &facts).map(drop)
}

/// That Assign, through the same path as a qube's.
fn assign_as_dom0(svc: &Service, record: &Record) -> Result<(), ApiError> {
    match svc.handle(Ok(request(record)?)) {
        Reply::Ok(_) => Ok(()),
        Reply::Err { message, .. } | Reply::Named { message, .. } => Err(ApiError::Qubes(message)),
    }
}
