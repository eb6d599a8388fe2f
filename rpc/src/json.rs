//! The one JSON shape of every `--json` output (both binaries) and of
//! errors, described by `docs/json-schema.json`: field names shared by
//! all, booleans as booleans, options as a map of booleans, lists as lists.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::native::{AssignmentEntry, DeviceEntry, NativeError};
use crate::reply::ExceptionKind;

/// One device (`device` in the schema).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceJson {
    pub backend: String,
    pub port_id: String,
    pub device_id: String,
    pub sbdf: Option<String>,
    /// `Class: Vendor Product`.
    pub description: String,
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub class_name: Option<String>,
    pub driver: Option<String>,
    pub bridge: bool,
    /// The kernel's reset methods; empty when it knows none (then a qube
    /// starts with the device only with no-strict-reset).
    pub reset_methods: Vec<String>,
    /// The other `_key` data, as strings.
    pub data: BTreeMap<String, String>,
    /// Who it is assigned to; `null` when that could not be known.
    pub assigned_to: Option<Vec<AssignedJson>>,
    /// The running qubes that hold it (dom0's view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<Vec<String>>,
    /// What dom0 itself uses it for (dom0's view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_by_dom0: Option<Vec<String>>,
}

/// One assignment of a device, as a device lists it.
#[derive(Clone, Debug, Serialize)]
pub struct AssignedJson {
    pub qube: Option<String>,
    pub mode: String,
    pub options: BTreeMap<String, bool>,
}

/// One assignment (`assignment` in the schema).
#[derive(Clone, Debug, Serialize)]
pub struct AssignmentJson {
    pub backend: String,
    pub port_id: String,
    /// `*` for a port-only assignment.
    pub device_id: String,
    pub frontend: Option<String>,
    pub mode: String,
    pub options: BTreeMap<String, bool>,
    /// Whether the qube holds it now.
    pub attached: bool,
}

/// A command that changed something (`done`).
#[derive(Clone, Debug, Serialize)]
pub struct DoneJson {
    pub ok: bool,
    pub message: String,
}

/// A failure (`error`): `type` is the exception name, or `local` (the call
/// could not be made) or `usage`; `code` the exit status.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorJson {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u8,
    pub message: String,
    pub device: Option<String>,
    pub qube: Option<String>,
}

/// The lifted `_key`s.
const LIFTED: [&str; 5] = ["sbdf", "class_name", "driver", "bridge", "reset_method"];

fn options(o: &[(String, String)]) -> BTreeMap<String, bool> {
    o.iter().map(|(k, v)| (k.clone(), v == "True")).collect()
}

impl DeviceJson {
    pub fn new(d: &DeviceEntry, assigned_to: Option<Vec<&AssignmentEntry>>) -> DeviceJson {
        let data = |key: &str| d.data.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let name = [d.vendor.as_deref(), d.product.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let class_name = data("class_name");
        DeviceJson {
            backend: d.backend.clone(),
            port_id: d.port.clone(),
            device_id: d.device_id.clone(),
            sbdf: data("sbdf"),
            description: match &class_name {
                Some(c) => format!("{c}: {name}"),
                None => name,
            },
            vendor: d.vendor.clone(),
            product: d.product.clone(),
            class_name,
            driver: data("driver"),
            bridge: data("bridge").as_deref() == Some("True"),
            reset_methods: match data("reset_method").as_deref() {
                None | Some("none") => Vec::new(),
                Some(m) => m.split_whitespace().map(str::to_owned).collect(),
            },
            data: d
                .data
                .iter()
                .filter(|(k, _)| !LIFTED.contains(&k.as_str()))
                .cloned()
                .collect(),
            assigned_to: assigned_to.map(|a| {
                a.into_iter()
                    .map(|e| AssignedJson {
                        qube: e.frontend.clone(),
                        mode: e.mode.as_str().to_owned(),
                        options: options(&e.options),
                    })
                    .collect()
            }),
            attached_to: None,
            used_by_dom0: None,
        }
    }
}

impl AssignmentJson {
    pub fn new(a: &AssignmentEntry, attached: bool) -> AssignmentJson {
        AssignmentJson {
            backend: a.backend.clone(),
            port_id: a.port.clone(),
            device_id: a.device_id.clone(),
            frontend: a.frontend.clone(),
            mode: a.mode.as_str().to_owned(),
            options: options(&a.options),
            attached,
        }
    }
}

impl ErrorJson {
    /// A refusal (from dom0, or of the same kind made locally).
    pub fn refused(e: &NativeError) -> ErrorJson {
        ErrorJson {
            error: ErrorBody {
                kind: ExceptionKind::from_code(e.code).map_or(e.kind.clone(), |k| k.name().to_owned()),
                code: e.code,
                message: e.message.clone(),
                device: e.device.clone(),
                qube: e.qube.clone(),
            },
        }
    }

    /// A failure of this side: `local` (exit 1) or `usage` (exit 2).
    pub fn other(kind: &str, code: u8, message: impl Into<String>) -> ErrorJson {
        ErrorJson {
            error: ErrorBody {
                kind: kind.to_owned(),
                code,
                message: message.into(),
                device: None,
                qube: None,
            },
        }
    }
}
