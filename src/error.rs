//! The one error enum of the service, each variant mapped to the exception
//! name stock clients know.

use qubes_pci_rpc::{DecodeError, ExceptionKind, Reply};

use crate::pci::SysfsError;
use crate::store::StoreError;
use crate::sysinfo::SystemInfoError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("No such domain: {0}")]
    NoSuchQube(String),
    #[error("{0}")]
    DeviceNotFound(String),
    #[error("{0}")]
    AlreadyAssigned(String),
    #[error("{0}")]
    NotAssigned(String),
    #[error("{0}")]
    AlreadyAttached(String),
    #[error("{0}")]
    NotHalted(String),
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Value(String),
    #[error("Invalid assignment mode: the payload must be exactly required, auto-attach or ask-to-attach")]
    InvalidMode,
    #[error("{0}")]
    Qubes(String),
    #[error("cannot read dom0's PCI devices: {0}")]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}; give the system info with --system-info FILE (or QUBES_PCI_ADMIN_SYSTEM_INFO), or run in dom0 where qubesd answers internal.GetSystemInfo")]
    SystemInfo(#[from] SystemInfoError),
}

impl ApiError {
    pub fn kind(&self) -> ExceptionKind {
        match self {
            ApiError::Decode(_) | ApiError::Protocol(_) => ExceptionKind::ProtocolError,
            ApiError::PermissionDenied(_) => ExceptionKind::PermissionDenied,
            ApiError::NoSuchQube(_) => ExceptionKind::QubesVMNotFoundError,
            ApiError::DeviceNotFound(_) => ExceptionKind::DeviceNotFound,
            ApiError::AlreadyAssigned(_) => ExceptionKind::DeviceAlreadyAssigned,
            ApiError::NotAssigned(_) => ExceptionKind::DeviceNotAssigned,
            ApiError::AlreadyAttached(_) => ExceptionKind::DeviceAlreadyAttached,
            ApiError::NotHalted(_) => ExceptionKind::QubesVMNotHaltedError,
            ApiError::NotRunning(_) => ExceptionKind::QubesVMNotRunningError,
            ApiError::Value(_) => ExceptionKind::QubesValueError,
            ApiError::InvalidMode => ExceptionKind::QubesUnrecognizedDeviceAssignmentMode,
            ApiError::Qubes(_) | ApiError::Sysfs(_) | ApiError::SystemInfo(_) | ApiError::Store(_) => {
                ExceptionKind::QubesException
            }
        }
    }

    pub fn to_reply(&self) -> Reply {
        Reply::error(self.kind(), self.to_string())
    }
}
