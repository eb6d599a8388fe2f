//! What the store holds: the assignments, and which running qube holds
//! which device.

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceId, DeviceRef, PciOptions, PciPath, QubeName, Sbdf, Wild};
use serde_json::{json, Value};

/// One assignment of a dom0 PCI device to a qube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub frontend: QubeName,
    pub port: PciPath,
    /// `*` when the assignment was made by port alone.
    pub device_id: Wild<DeviceId>,
    pub mode: AssignmentMode,
    pub options: PciOptions,
    /// The address the device had when it was assigned (informative: the
    /// port path is what identifies it).
    pub sbdf: Option<Sbdf>,
}

impl Record {
    /// The device as the API names it (backend dom0).
    pub fn device_ref(&self) -> DeviceRef {
        DeviceRef {
            backend: QubeName::dom0(),
            port: Wild::Is(self.port.clone()),
            device_id: self.device_id.clone(),
        }
    }

    /// The wire form, with the owning qube as `frontend_domain`.
    pub fn to_assignment(&self) -> Assignment {
        Assignment {
            device: self.device_ref(),
            frontend: Some(self.frontend.clone()),
            mode: self.mode,
            options: self.options.to_pairs(),
        }
    }

    /// Same qube and same device identity (port and device id): the key
    /// of an assignment.
    pub fn same_key(&self, other: &Record) -> bool {
        self.frontend == other.frontend && self.port == other.port && self.device_id == other.device_id
    }

    /// `dom0:PORT:DEVICE_ID`, as messages name the device.
    pub fn device_name(&self) -> String {
        self.device_ref().to_string()
    }
}

/// A device bound to pciback and handed to a qube at its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub qube: QubeName,
    pub port: PciPath,
    pub sbdf: Sbdf,
    /// The live device id at the time of the start.
    pub device_id: DeviceId,
    pub options: PciOptions,
}

/// The whole store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Incremented by every write.
    pub generation: u64,
    pub assignments: Vec<Record>,
    pub holds: Vec<Hold>,
}

impl State {
    /// The JSON view of `store dump`: identifiers in their usual text forms.
    pub fn to_json(&self) -> Value {
        let options = |o: &PciOptions| json!({"no-strict-reset": o.no_strict_reset, "permissive": o.permissive});
        json!({
            "generation": self.generation,
            "assignments": self.assignments.iter().map(|r| json!({
                "frontend": r.frontend.as_str(),
                "backend": "dom0",
                "port": r.port.to_string(),
                "device_id": r.device_id.to_string(),
                "mode": r.mode.as_str(),
                "options": options(&r.options),
                "sbdf": r.sbdf.map(|s| s.to_string()),
            })).collect::<Vec<_>>(),
            "holds": self.holds.iter().map(|h| json!({
                "qube": h.qube.as_str(),
                "port": h.port.to_string(),
                "sbdf": h.sbdf.to_string(),
                "device_id": h.device_id.to_string(),
                "options": options(&h.options),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn assigned_to<'a>(&'a self, qube: &'a QubeName) -> impl Iterator<Item = &'a Record> + 'a {
        self.assignments.iter().filter(move |r| &r.frontend == qube)
    }

    pub fn holds_of<'a>(&'a self, qube: &'a QubeName) -> impl Iterator<Item = &'a Hold> + 'a {
        self.holds.iter().filter(move |h| &h.qube == qube)
    }

    /// Position of the assignment with the same key as `r`.
    pub fn find(&self, r: &Record) -> Option<usize> {
        self.assignments.iter().position(|x| x.same_key(r))
    }
}
