//! Tables for people, JSON for scripts.

use std::io::Write;

use qubes_pci_rpc::native::{AssignmentEntry, DeviceEntry};
use serde_json::{json, Value};

use super::{kind_name, Failure, Success};

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

fn device_json(d: &DeviceEntry) -> Value {
    json!({
        "backend": d.backend,
        "port": d.port,
        "device_id": d.device_id,
        "vendor": d.vendor,
        "product": d.product,
        "data": d.data.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn assignment_json(a: &AssignmentEntry) -> Value {
    json!({
        "backend": a.backend,
        "port": a.port,
        "device_id": a.device_id,
        "frontend": a.frontend,
        "mode": a.mode.as_str(),
        "options": a.options.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
    })
}

pub fn success(out: &mut impl Write, s: &Success, as_json: bool) -> std::io::Result<()> {
    match (s, as_json) {
        (Success::Devices(d), true) => writeln!(out, "{}", Value::Array(d.iter().map(device_json).collect())),
        (Success::Assignments(a), true) => writeln!(out, "{}", Value::Array(a.iter().map(assignment_json).collect())),
        (Success::Done(msg), true) => writeln!(out, "{}", json!({"ok": true, "message": msg})),
        (Success::Devices(d), false) => {
            let rows: Vec<Vec<String>> = d
                .iter()
                .map(|d| {
                    let name = [d.vendor.as_deref(), d.product.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ");
                    let class = data(d, "class_name");
                    vec![
                        format!("{}:{}", d.backend, d.port),
                        data(d, "sbdf").to_owned(),
                        d.device_id.clone(),
                        if class.is_empty() {
                            name
                        } else {
                            format!("{class}: {name}")
                        },
                    ]
                })
                .collect();
            table(out, &["DEVICE", "SBDF", "DEVICE ID", "DESCRIPTION"], &rows)
        }
        (Success::Assignments(a), false) => {
            let rows: Vec<Vec<String>> = a
                .iter()
                .map(|a| {
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
                    ]
                })
                .collect();
            table(out, &["DEVICE", "DEVICE ID", "QUBE", "MODE", "OPTIONS"], &rows)
        }
        (Success::Done(msg), false) => writeln!(out, "{msg}"),
    }
}

pub fn failure(out: &mut impl Write, f: &Failure, as_json: bool) -> std::io::Result<()> {
    match (f, as_json) {
        (Failure::Refused(e), true) => writeln!(
            out,
            "{}",
            json!({"error": {"kind": kind_name(e), "code": e.code, "message": e.message, "device": e.device, "qube": e.qube}})
        ),
        (Failure::Local(m), true) => writeln!(out, "{}", json!({"error": {"kind": "local", "code": 1, "message": m}})),
        (Failure::Refused(e), false) => {
            eprintln!("qubes-pci: {}: {}", kind_name(e), e.message);
            Ok(())
        }
        (Failure::Local(m), false) => {
            eprintln!("qubes-pci: {m}");
            Ok(())
        }
    }
}
