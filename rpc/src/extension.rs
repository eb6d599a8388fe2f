//! The qubesd extension's contract with `qubes-pci-admin check KIND`: the
//! facts qubesd holds in memory, sent as one JSON object on stdin, and the
//! verdict, one JSON object on stdout. The extension
//! (`service/qubesd-ext`) writes and reads exactly these shapes;
//! `docs/extension-schema.json` is generated from them, and the tests
//! check the extension's facts against it.
//!
//! Values are as qubesd holds them (strings where qubesd has strings); the
//! binary validates every one before the rules see it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn dom0() -> String {
    "dom0".to_owned()
}

fn any() -> String {
    "*".to_owned()
}

fn required() -> String {
    "required".to_owned()
}

/// A device as the event names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceFact {
    /// The backend qube's name (PCI devices belong to dom0).
    #[serde(default = "dom0")]
    pub backend: String,
    /// The port id (a PCI path such as `00_14.0`).
    pub port: String,
    /// The device id, `*` for any.
    #[serde(default = "any")]
    pub device_id: String,
}

/// One PCI assignment as qubesd holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AssignmentFact {
    /// The qube it is assigned to.
    pub qube: String,
    #[serde(default = "dom0")]
    pub backend: String,
    pub port: String,
    #[serde(default = "any")]
    pub device_id: String,
    /// `required`, `auto-attach`, `ask-to-attach` or `manual`.
    #[serde(default = "required")]
    pub mode: String,
    /// The options as stored (any non-empty value is on once qubesd
    /// renders it).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// What the policy needs to know of a qube (the entries of qubesd's
/// `internal.GetSystemInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct QubeFact {
    /// qubesd's class: `AppVM`, `AdminVM`, …
    #[serde(rename = "type", default)]
    pub class: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub power_state: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// Everything the extension knows of one event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtensionFacts {
    /// The calling qube (`dom0` for dom0's own tools).
    #[serde(default = "dom0")]
    pub source: String,
    /// The qube acted on (for `start`: the qube starting).
    pub dest: String,
    /// The destination's class (`AdminVM` for dom0).
    #[serde(default)]
    pub dest_class: Option<String>,
    /// The destination's `virt_mode`.
    #[serde(default)]
    pub dest_virt_mode: Option<String>,
    /// Whether that `virt_mode` is qubesd's default rather than set on
    /// the qube (`property_is_default`).
    #[serde(default)]
    pub dest_virt_mode_default: bool,
    #[serde(default)]
    pub dest_running: bool,
    /// Ports of the PCI devices the destination holds now.
    #[serde(default)]
    pub dest_attached: Vec<String>,
    /// The destination has `maxmem` set (memory balancing).
    #[serde(default)]
    pub memory_balancing: bool,
    /// The destination's `memory` and `maxmem`, in MiB.
    #[serde(default)]
    pub dest_memory: Option<u64>,
    #[serde(default)]
    pub dest_maxmem: Option<u64>,
    /// The destination's `devices_denied`: 7-character interface patterns
    /// run together (`p02****`).
    #[serde(default)]
    pub dest_devices_denied: String,
    /// The device the event names.
    #[serde(default)]
    pub device: Option<DeviceFact>,
    /// The mode the event asks for.
    #[serde(default)]
    pub mode: Option<String>,
    /// The options the event asks for, as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Every qube's PCI assignments.
    #[serde(default)]
    pub assignments: Vec<AssignmentFact>,
    /// The devices other running qubes hold, with their assignment's
    /// options.
    #[serde(default)]
    pub running: Vec<AssignmentFact>,
    /// The source and destination, for the policy's option grants.
    #[serde(default)]
    pub system: BTreeMap<String, QubeFact>,
}

/// The binary's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// `true`: the rules let the event go on.
    pub ok: bool,
    /// For a refusal: the name of the qubesd exception to raise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// For a refusal: what the caller is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Verdict {
    pub fn allow() -> Verdict {
        Verdict {
            ok: true,
            exception: None,
            message: None,
        }
    }

    pub fn refuse(exception: &str, message: String) -> Verdict {
        Verdict {
            ok: false,
            exception: Some(exception.to_owned()),
            message: Some(message),
        }
    }
}
