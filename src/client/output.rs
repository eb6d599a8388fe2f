//! Tables for people, JSON for scripts.

use std::io::Write;

use qubes_pci_rpc::native::{AssignmentEntry, DeviceEntry};
use serde_json::{json, Value};

use super::{kind_name, reset_methods, DeviceView, Failure, Success};

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

/// `Class: Vendor Product`, as the tables show a device.
fn description(d: &DeviceEntry) -> String {
    let name = [d.vendor.as_deref(), d.product.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    match data(d, "class_name") {
        "" => name,
        class => format!("{class}: {name}"),
    }
}

/// Options as a map of booleans (`True` is on).
fn options_json(options: &[(String, String)]) -> Value {
    Value::Object(
        options
            .iter()
            .map(|(k, v)| (k.clone(), Value::Bool(v == "True")))
            .collect(),
    )
}

/// The keys lifted out of `data` into fields of their own.
const LIFTED: [&str; 5] = ["sbdf", "class_name", "driver", "bridge", "reset_method"];

/// A device in the one JSON schema (docs/json-schema.json, `device`).
pub fn device_json(v: &DeviceView) -> Value {
    let d = &v.entry;
    let opt = |k: &str| match data(d, k) {
        "" => Value::Null,
        s => Value::String(s.to_owned()),
    };
    json!({
        "backend": d.backend,
        "port_id": d.port,
        "device_id": d.device_id,
        "sbdf": opt("sbdf"),
        "description": description(d),
        "vendor": d.vendor,
        "product": d.product,
        "class_name": opt("class_name"),
        "driver": opt("driver"),
        "bridge": data(d, "bridge") == "True",
        "reset_methods": reset_methods(d),
        "data": d.data.iter()
            .filter(|(k, _)| !LIFTED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "assigned_to": v.assigned_to.as_ref().map(|a| a.iter().map(|e| json!({
            "qube": e.frontend,
            "mode": e.mode.as_str(),
            "options": options_json(&e.options),
        })).collect::<Vec<_>>()),
    })
}

/// An assignment in the one JSON schema (`assignment`).
fn assignment_json(a: &AssignmentEntry, attached: bool) -> Value {
    json!({
        "backend": a.backend,
        "port_id": a.port,
        "device_id": a.device_id,
        "frontend": a.frontend,
        "mode": a.mode.as_str(),
        "options": options_json(&a.options),
        "attached": attached,
    })
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
        (Success::Done(msg), true) => writeln!(out, "{}", json!({"ok": true, "message": msg})),
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
    match (f, as_json) {
        (Failure::Refused(e), true) => writeln!(
            out,
            "{}",
            json!({"error": {"type": kind_name(e), "code": e.code, "message": e.message, "device": e.device, "qube": e.qube}})
        ),
        (Failure::Local(m), true) => writeln!(
            out,
            "{}",
            json!({"error": {"type": "local", "code": 1, "message": m, "device": null, "qube": null}})
        ),
        (Failure::Usage(m), true) => writeln!(
            out,
            "{}",
            json!({"error": {"type": "usage", "code": 2, "message": m, "device": null, "qube": null}})
        ),
        (Failure::Refused(e), false) => {
            eprintln!("qubes-pci: {}: {}", kind_name(e), e.message);
            Ok(())
        }
        (Failure::Local(m), false) => {
            eprintln!("qubes-pci: {m}");
            Ok(())
        }
        (Failure::Usage(m), false) => {
            eprintln!("qubes-pci: {m}");
            Ok(())
        }
    }
}
