//! The administrator's assignment commands (`assign-defaults`) and the
//! rule check the qubesd extension runs (`check`).

use std::io::{Read, Write};
use std::process::ExitCode;

use qubes_pci_admin::api::defaults::{self, Recipient};
use qubes_pci_admin::api::Service;
use qubes_pci_admin::extension;

/// `check KIND`: facts on stdin, verdict on stdout.
pub fn check(svc: &Service, kind: extension::Kind) -> anyhow::Result<ExitCode> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(extension::MAX_FACTS as u64 + 1)
        .read_to_end(&mut input)?;
    let (verdict, read) = extension::check_json(&svc.sources.config, kind, &input);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &verdict)?;
    writeln!(out)?;
    Ok(ExitCode::from(if read { 0 } else { 2 }))
}

/// `assign-defaults`: one line per network or USB controller.
pub fn assign_defaults(
    svc: &Service,
    net: Option<&str>,
    usb: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = Recipient::parse(net, "sys-net")
        .and_then(|net| Ok((net, Recipient::parse(usb, "sys-usb")?)))
        .and_then(|(net, usb)| defaults::assign_defaults(svc, &net, &usb, dry_run));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qubes-pci-admin: {}", e.detail());
            return Ok(ExitCode::from(1));
        }
    };
    let lines = &report.lines;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        // The `defaults_line` shape of docs/json-schema.json.
        let rows: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                serde_json::json!({
                    "device": l.device,
                    "sbdf": l.sbdf,
                    "qube": l.qube,
                    "outcome": l.outcome.replace(' ', "-"),
                    "detail": (!l.detail.is_empty()).then_some(&l.detail),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        for l in lines {
            let detail = if l.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.detail)
            };
            match (l.outcome.as_str(), &l.qube) {
                ("assigned" | "would assign", Some(q)) => {
                    writeln!(out, "{}: {} ({}) to {q}{detail}", l.outcome, l.device, l.sbdf)?
                }
                (_, Some(q)) => writeln!(out, "{}: {} ({}) for {q}{detail}", l.outcome, l.device, l.sbdf)?,
                // The class's note says why.
                (_, None) => {}
            }
        }
        if lines.is_empty() {
            writeln!(out, "no network or USB controllers found")?;
        }
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
