//! `preflight`, `hide-list` and `reconcile`: dom0's diagnosis commands
//! (their logic is `qubes_pci_admin::api::diagnose`, on the rules' facts).

use std::io::Write;
use std::process::ExitCode;

use qubes_pci_admin::api::diagnose::{self, HideMismatch};
use qubes_pci_admin::api::Service;
use qubes_pci_admin::rules::Severity;
use qubes_pci_admin::ApiError;
use qubes_pci_rpc::QubeName;

/// Exit status when the command cannot tell (an unknown qube, qubesd
/// unreachable): neither "starts" (0) nor "does not" (1).
const CANNOT_TELL: u8 = 2;

fn cannot_tell(e: &ApiError) -> ExitCode {
    eprintln!("qubes-pci-admin: {}", e.detail());
    ExitCode::from(CANNOT_TELL)
}

/// `preflight QUBE [--json]`: exit 0 when nothing blocks the start, 1 when
/// something does, 2 when it cannot tell.
pub fn preflight(svc: &Service, qube: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Ok(name) = QubeName::parse(qube) else {
        eprintln!("qubes-pci-admin: {qube:?} is not a qube name");
        return Ok(ExitCode::from(CANNOT_TELL));
    };
    let problems = match diagnose::preflight(&svc.sources, &name) {
        Ok(p) => p,
        Err(e) => return Ok(cannot_tell(&e)),
    };
    let starts = !problems.iter().any(|p| p.severity == Severity::Error);
    let mut out = std::io::stdout().lock();
    if json {
        // The `preflight` shape of docs/json-schema.json.
        let rows: Vec<serde_json::Value> = problems
            .iter()
            .map(|p| {
                let mut row = serde_json::json!({
                    "code": p.code,
                    "severity": match p.severity { Severity::Error => "error", Severity::Warning => "warning" },
                    "message": p.refusal.to_string(),
                });
                if let (Some(port), Some(obj)) = (&p.port, row.as_object_mut()) {
                    obj.insert("device".into(), format!("dom0:{port}").into());
                }
                row
            })
            .collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({"qube": qube, "starts": starts, "problems": rows}),
        )?;
        writeln!(out)?;
    } else {
        for p in &problems {
            let severity = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            writeln!(out, "{severity}: [{}] {}", p.code, p.refusal)?;
        }
        match (problems.is_empty(), starts) {
            (true, _) => writeln!(out, "{qube}: no problem found with its PCI devices")?,
            (false, true) => writeln!(out, "{qube} can start (with the warnings above)")?,
            (false, false) => writeln!(
                out,
                "{qube} cannot start with its PCI devices until the errors above are fixed"
            )?,
        }
    }
    Ok(ExitCode::from(if starts { 0 } else { 1 }))
}

/// `hide-list [--check]`.
pub fn hide_list(svc: &Service, check: bool) -> anyhow::Result<ExitCode> {
    let (inventory, sbdfs) = match diagnose::to_hide(&svc.sources) {
        Ok(v) => v,
        Err(e) => return Ok(cannot_tell(&e)),
    };
    let option = diagnose::hide_option(&inventory, &sbdfs);
    let mut out = std::io::stdout().lock();
    if !check {
        writeln!(out, "{option}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mismatches = match diagnose::hide_check(&svc.sources) {
        Ok(m) => m,
        Err(e) => return Ok(cannot_tell(&e)),
    };
    for m in &mismatches {
        match m {
            HideMismatch::NotHidden(sbdf, port) => writeln!(
                out,
                "assigned but not hidden: dom0:{port} ({sbdf}) has a required assignment, and dom0's drivers may \
                 take it at boot"
            )?,
            HideMismatch::NotAssigned(entry, Some(sbdf)) => writeln!(
                out,
                "hidden but not assigned: {entry} ({sbdf}) is hidden from dom0, and no qube requires it"
            )?,
            HideMismatch::NotAssigned(entry, None) => {
                writeln!(out, "hidden but not assigned: {entry} names no device present")?
            }
        }
    }
    if mismatches.is_empty() {
        writeln!(
            out,
            "dom0's kernel command line hides every device with a required assignment"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "put this on dom0's kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then regenerate the \
         GRUB configuration and the initramfs):\n{option}"
    )?;
    Ok(ExitCode::from(1))
}

/// `reconcile [--json] [--apply]`.
pub fn reconcile(svc: &Service, json: bool, apply: bool) -> anyhow::Result<ExitCode> {
    let changes = match diagnose::reconcile(svc, apply) {
        Ok(c) => c,
        Err(e) => return Ok(cannot_tell(&e)),
    };
    let mut out = std::io::stdout().lock();
    if json {
        // The `reconcile` shape of docs/json-schema.json.
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({"changes": changes}))?;
        writeln!(out)?;
    } else {
        for c in &changes {
            let what = match (c.kind, &c.now_at) {
                ("moved", Some(to)) => format!("is now at dom0:{to}"),
                ("replaced", _) => "another device is at its port".to_owned(),
                _ => "is nowhere in dom0".to_owned(),
            };
            writeln!(out, "{}: {}'s dom0:{}:{} {what}", c.kind, c.qube, c.port, c.device_id)?;
            match (&c.applied, c.kind) {
                (Some(done), _) => writeln!(out, "  {done}")?,
                (None, "moved") => writeln!(out, "  re-point it: qubes-pci-admin reconcile --apply")?,
                _ => writeln!(out, "  qvm-pci unassign {} dom0:{}", c.qube, c.port)?,
            }
        }
        if changes.is_empty() {
            writeln!(out, "every PCI assignment matches the device at its port")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
