//! One assignment of a dom0 PCI device to a qube, as the rules see it, and
//! the one place that builds it: from what a caller asks for
//! ([`Record::requested`]) or from what qubesd stores ([`Record::stored`]).

use qubes_pci_rpc::{
    Assignment, AssignmentMode, DecodeError, DeviceId, DeviceRef, PciOptions, PciPath, QubeName, Wild,
};

/// One assignment of a dom0 PCI device to a qube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub frontend: QubeName,
    pub port: PciPath,
    /// `*` when the assignment was made by port alone.
    pub device_id: Wild<DeviceId>,
    pub mode: AssignmentMode,
    pub options: PciOptions,
}

/// Why a requested assignment is not one.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("assign a PCI device by its port id (such as dom0+00_14.0+_): `qvm-pci` lists them")]
    NoPort,
    #[error(transparent)]
    Options(#[from] DecodeError),
}

impl Record {
    /// What a caller asks for: a concrete port, and options that are only
    /// `True` or `False` (`False` is off).
    pub fn requested(
        frontend: QubeName,
        device: &DeviceRef,
        mode: AssignmentMode,
        untrusted_options: &[(String, String)],
    ) -> Result<Record, RecordError> {
        let Wild::Is(port) = device.port.clone() else {
            return Err(RecordError::NoPort);
        };
        Ok(Record {
            frontend,
            port,
            device_id: device.device_id.clone(),
            mode,
            options: PciOptions::from_pairs(untrusted_options)?,
        })
    }

    /// What qubesd stores, with its options as qubesd renders them: any
    /// non-empty value is on (a stored `False` is on). `None` for what is
    /// not a dom0 PCI device with a port (it cannot clash with one).
    pub fn stored(frontend: QubeName, assignment: &Assignment) -> Option<Record> {
        if !assignment.device.backend.is_dom0() {
            return None;
        }
        let on = |name: &str| assignment.options.iter().any(|(k, v)| k == name && !v.is_empty());
        Some(Record {
            frontend,
            port: assignment.device.port.as_option()?.clone(),
            device_id: assignment.device.device_id.clone(),
            mode: assignment.mode,
            options: PciOptions {
                no_strict_reset: on(qubes_pci_rpc::options::NO_STRICT_RESET),
                permissive: on(qubes_pci_rpc::options::PERMISSIVE),
            },
        })
    }

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
