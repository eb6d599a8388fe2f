//! The administrator's commands on the store: dump it, prepare and release
//! a qube's start, assign the installer's defaults, import a qubes.xml.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use qubes_pci_admin::api::Service;
use qubes_pci_admin::migrate::{defaults, qubes_xml};
use qubes_pci_admin::passthrough::start;
use qubes_pci_admin::store::Store;
use qubes_pci_rpc::QubeName;

fn qube(name: &str) -> anyhow::Result<QubeName> {
    QubeName::parse(name).with_context(|| format!("{name:?} is not a qube name"))
}

/// `store dump`: the whole store as JSON; exit 1 when it does not load.
pub fn dump(svc: &Service) -> anyhow::Result<ExitCode> {
    match Store::new(&svc.config.state_dir).read() {
        Ok(state) => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &state.to_json())?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("qubes-pci-admin: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `prepare-start QUBE`: on success the `<hostdev>` XML on stdout and exit
/// 0; a refusal on stderr and exit 1 (which makes libvirt abort the start).
pub fn prepare_start(svc: &Service, name: &str, no_bind: bool) -> anyhow::Result<ExitCode> {
    let q = qube(name)?;
    let system = svc.system_info().map_err(|e| anyhow::anyhow!("{e}"))?;
    match start::prepare_start(&svc.config, &system, &q, !no_bind) {
        Ok(report) => {
            for h in &report.stale {
                eprintln!("dropped a stale hold of dom0:{} by {} (not running)", h.port, h.qube);
            }
            for (h, done) in &report.attached {
                tracing::info!(qube = %q, device = %h.port, sbdf = %h.sbdf, "device handed to the qube at its start");
                for d in done {
                    eprintln!("{d}");
                }
            }
            for s in &report.skipped {
                eprintln!("not attached: {s}");
            }
            if report.memory_balancing && !report.attached.is_empty() {
                eprintln!(
                    "note: {q} has memory balancing on, which a qube with PCI devices cannot use; it runs with its \
                     initial memory"
                );
            }
            print!("{}", report.hostdev_xml());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::warn!(qube = %q, "start refused: {e}");
            eprintln!("qubes-pci-admin: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `release QUBE`: drops the qube's holds; devices stay on pciback.
pub fn release(svc: &Service, name: &str) -> anyhow::Result<ExitCode> {
    let q = qube(name)?;
    let gone = start::release(&svc.config, &q).map_err(|e| anyhow::anyhow!("{e}"))?;
    for h in &gone {
        println!(
            "released dom0:{} ({}) from {q}; it stays bound to pciback",
            h.port, h.sbdf
        );
    }
    if gone.is_empty() {
        println!("{q} held no PCI devices");
    }
    Ok(ExitCode::SUCCESS)
}

/// `assign-defaults`: one line per network or USB controller.
pub fn assign_defaults(svc: &Service, net: &str, usb: &str, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let system = svc.system_info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let lines = match defaults::assign_defaults(&svc.config, &system, &qube(net)?, &qube(usb)?, dry_run) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qubes-pci-admin: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &lines)?;
        writeln!(out)?;
    } else {
        let verb = if dry_run { "would be " } else { "" };
        for l in &lines {
            let detail = if l.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.detail)
            };
            match l.outcome.as_str() {
                "assigned" | "changed" => writeln!(
                    out,
                    "{verb}{}: {} ({}) to {}{detail}",
                    l.outcome, l.device, l.sbdf, l.qube
                )?,
                _ => writeln!(out, "{}: {} ({}) for {}{detail}", l.outcome, l.device, l.sbdf, l.qube)?,
            }
        }
        if lines.is_empty() {
            writeln!(out, "no network or USB controllers found")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `import-qubes-xml FILE`: one line per PCI entry of the file.
pub fn import(svc: &Service, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let system = svc.system_info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let outcomes = match qubes_xml::import(&svc.config, &system, file) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qubes-pci-admin: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &outcomes)?;
        writeln!(out)?;
    } else {
        for o in &outcomes {
            let what = if o.imported { "imported" } else { "skipped" };
            let detail = if o.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", o.detail)
            };
            writeln!(out, "{what} {} dom0:{}{detail}", o.qube, o.id)?;
        }
        let n = outcomes.iter().filter(|o| o.imported).count();
        writeln!(out, "{n} imported, {} skipped", outcomes.len() - n)?;
    }
    Ok(ExitCode::SUCCESS)
}
