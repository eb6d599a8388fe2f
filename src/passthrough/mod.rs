//! The PCI passthrough rules: what may be assigned where, and what a qube
//! may take when it starts. One implementation, used by the front door,
//! by `assign-defaults` and by the qubesd extension (through `check`).

pub mod check;
pub mod defaults;
pub mod rules;

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceId, DeviceRef, PciOptions, PciPath, QubeName, Wild};

/// One assignment of a dom0 PCI device to a qube, as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub frontend: QubeName,
    pub port: PciPath,
    /// `*` when the assignment was made by port alone.
    pub device_id: Wild<DeviceId>,
    pub mode: AssignmentMode,
    pub options: PciOptions,
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

    /// The canonical wire form sent to qubesd: the owning qube as
    /// `frontend_domain`, only the options that are on, as `True`.
    pub fn to_assignment(&self) -> Assignment {
        Assignment {
            device: self.device_ref(),
            frontend: Some(self.frontend.clone()),
            mode: self.mode,
            options: self.options.to_pairs(),
        }
    }

    /// Same qube and same device identity (port and device id): the key
    /// qubesd finds an assignment by.
    pub fn same_key(&self, other: &Record) -> bool {
        self.frontend == other.frontend && self.port == other.port && self.device_id == other.device_id
    }

    /// `dom0:PORT:DEVICE_ID`, as messages name the device.
    pub fn device_name(&self) -> String {
        self.device_ref().to_string()
    }
}
