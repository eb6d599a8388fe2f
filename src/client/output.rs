//! Tables for people, JSON for scripts.

use std::io::Write;

use qubes_pci_rpc::json::{AssignmentJson, DeviceJson, DoneJson, ErrorJson};
use qubes_pci_rpc::native::{AssignmentEntry, DeviceEntry};
use serde_json::Value;

use super::{kind_name, DeviceView, Failure, Success};

fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c).map(String::len))
                .chain(header.get(c).map(|h| h.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn data<'a>(d: &'a DeviceEntry, key: &str) -> &'a str {
    d.data.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
}

/// `Class: Vendor Product`, as the tables show a device (the JSON's
/// `description`, one place for both).
fn description(d: &DeviceEntry) -> String {
    DeviceJson::new(d, None).description
}

/// A device in the one JSON schema (docs/json-schema.json, `device`).
pub fn device_json(v: &DeviceView) -> Value {
    let json = DeviceJson::new(&v.entry, v.assigned_to.as_ref().map(|a| a.iter().collect()));
    serde_json::to_value(json).unwrap_or(Value::Null)
}

/// An assignment in the one JSON schema (`assignment`).
fn assignment_json(a: &AssignmentEntry, attached: bool) -> Value {
    serde_json::to_value(AssignmentJson::new(a, attached)).unwrap_or(Value::Null)
}

fn assigned_cell(v: &DeviceView) -> String {
    match &v.assigned_to {
        None => "?".to_owned(),
        Some(a) => a
            .iter()
            .map(|e| {
                let opts: Vec<String> = e
                    .options
                    .iter()
                    .filter(|(_, v)| v == "True")
                    .map(|(k, _)| k.clone())
                    .collect();
                let q = e.frontend.as_deref().unwrap_or("?");
                if opts.is_empty() {
                    format!("{q} ({})", e.mode.as_str())
                } else {
                    format!("{q} ({}, {})", e.mode.as_str(), opts.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub fn success(out: &mut impl Write, s: &Success, as_json: bool) -> std::io::Result<()> {
    match (s, as_json) {
        (Success::Devices(d), true) => writeln!(out, "{}", Value::Array(d.iter().map(device_json).collect())),
        (Success::Device(d), true) => writeln!(out, "{}", device_json(d)),
        (Success::Assignments(a), true) => writeln!(
            out,
            "{}",
            Value::Array(a.iter().map(|(e, on)| assignment_json(e, *on)).collect())
        ),
        (Success::Done(msg), true) => writeln!(
            out,
            "{}",
            serde_json::to_value(DoneJson {
                ok: true,
                message: msg.clone()
            })
            .unwrap_or(Value::Null)
        ),
        (Success::Devices(d), false) => {
            let rows: Vec<Vec<String>> = d
                .iter()
                .map(|v| {
                    vec![
                        format!("{}:{}", v.entry.backend, v.entry.port),
                        data(&v.entry, "sbdf").to_owned(),
                        description(&v.entry),
                        assigned_cell(v),
                    ]
                })
                .collect();
            table(out, &["BACKEND:DEVID", "SBDF", "DESCRIPTION", "ASSIGNED TO"], &rows)
        }
        (Success::Device(v), false) => {
            let d = &v.entry;
            writeln!(out, "device:       {}:{}", d.backend, d.port)?;
            writeln!(out, "device id:    {}", d.device_id)?;
            writeln!(out, "description:  {}", description(d))?;
            for (k, val) in &d.data {
                writeln!(out, "{:<13} {val}", format!("{k}:"))?;
            }
            writeln!(out, "assigned to:  {}", assigned_cell(v))
        }
        (Success::Assignments(a), false) => {
            let rows: Vec<Vec<String>> = a
                .iter()
                .map(|(a, on)| {
                    vec![
                        format!("{}:{}", a.backend, a.port),
                        a.device_id.clone(),
                        a.frontend.clone().unwrap_or_default(),
                        a.mode.as_str().to_owned(),
                        a.options
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        if *on { "yes" } else { "no" }.to_owned(),
                    ]
                })
                .collect();
            table(
                out,
                &["BACKEND:DEVID", "DEVICE ID", "QUBE", "MODE", "OPTIONS", "ATTACHED"],
                &rows,
            )
        }
        (Success::Done(msg), false) => writeln!(out, "{msg}"),
    }
}

/// An error in the one JSON schema (`error`).
pub fn failure(out: &mut impl Write, f: &Failure, as_json: bool) -> std::io::Result<()> {
    let error = match f {
        Failure::Refused(e) => ErrorJson::refused(e),
        Failure::Local(m) => ErrorJson::other("local", 1, m.clone()),
        Failure::Usage(m) => ErrorJson::other("usage", 2, m.clone()),
    };
    if as_json {
        return writeln!(out, "{}", serde_json::to_value(&error).unwrap_or(Value::Null));
    }
    match f {
        Failure::Refused(e) => eprintln!("qubes-pci: {}: {}", kind_name(e), e.message),
        Failure::Local(m) | Failure::Usage(m) => eprintln!("qubes-pci: {m}"),
    }
    Ok(())
}
