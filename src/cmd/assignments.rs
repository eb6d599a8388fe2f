//! The administrator's assignment commands (`assign-defaults`) and the
//! rule check the qubesd extension runs (`check`).

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use qubes_pci_admin::api::Service;
use qubes_pci_admin::passthrough::{check, defaults};
use qubes_pci_rpc::QubeName;

/// The largest facts document read from the extension.
const MAX_FACTS: u64 = 16 << 20;

fn qube(name: &str) -> anyhow::Result<QubeName> {
    QubeName::parse(name).with_context(|| format!("{name:?} is not a qube name"))
}

/// `check KIND`: facts on stdin, verdict on stdout.
pub fn check(svc: &Service, kind: check::Kind) -> anyhow::Result<ExitCode> {
    let mut input = Vec::new();
    std::io::stdin().take(MAX_FACTS + 1).read_to_end(&mut input)?;
    let (verdict, code) = match serde_json::from_slice::<check::Facts>(&input) {
        Ok(_) if input.len() as u64 > MAX_FACTS => (
            serde_json::json!({"ok": false, "exception": "QubesException", "message": "the facts are too large"}),
            2,
        ),
        Ok(facts) => (check::verdict(&check::run(&svc.config, kind, &facts)), 0),
        Err(e) => (
            serde_json::json!({
                "ok": false,
                "exception": "QubesException",
                "message": format!("qubes-pci-admin could not read the facts of this call ({e}); refused"),
            }),
            2,
        ),
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &verdict)?;
    writeln!(out)?;
    Ok(ExitCode::from(code))
}

/// `assign-defaults`: one line per network or USB controller.
pub fn assign_defaults(svc: &Service, net: &str, usb: &str, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let lines = match defaults::assign_defaults(svc, &qube(net)?, &qube(usb)?, dry_run) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qubes-pci-admin: {}", e.detail());
            return Ok(ExitCode::from(1));
        }
    };
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
        for l in &lines {
            let detail = if l.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.detail)
            };
            match l.outcome.as_str() {
                "assigned" | "would assign" => {
                    writeln!(out, "{}: {} ({}) to {}{detail}", l.outcome, l.device, l.sbdf, l.qube)?
                }
                _ => writeln!(out, "{}: {} ({}) for {}{detail}", l.outcome, l.device, l.sbdf, l.qube)?,
            }
        }
        if lines.is_empty() {
            writeln!(out, "no network or USB controllers found")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
