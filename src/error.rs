//! The one error enum of the service, each variant mapped to the exception
//! name stock clients know.
//!
//! Every name a qube can receive in the text protocol is one that
//! `qubesadmin` maps to a subclass of its `QubesException`, so `qvm-pci`
//! prints `Error: …` and exits 1 instead of a traceback. The exceptions are
//! upstream's `ProtocolError` for bytes no stock client sends, and policy
//! refusals, which go out as client classes (see [`ApiError::to_reply`]).

use qubes_pci_rpc::{DecodeError, ExceptionKind, Reply};

use crate::pci::SysfsError;
use crate::qubesd::QubesdError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Protocol(String),
    /// A qrexec policy refusal. `skippable`: a refused read that a stock
    /// `qvm-pci list` may skip, as it skips qubes the caller cannot see
    /// (any read of a qube other than dom0; `Assigned`/`Attached` of dom0
    /// when the caller may read dom0's devices).
    #[error("{message}")]
    PermissionDenied { message: String, skippable: bool },
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
    /// qubesd refused a request of ours: its exception, relayed.
    #[error("{message}")]
    Relayed { name: String, message: String },
    /// qubesd had the whole request for a change and gave no answer (past
    /// the deadline, or the connection broke): the change may or may not
    /// have been made. `detail` is for the journal.
    #[error(
        "qubesd did not answer this change in time, so it may or may not have taken effect: check with \
         `qvm-pci list` before trying again"
    )]
    Unanswered { detail: String },
    /// Something in dom0 failed (qubesd did not answer, a file does not
    /// parse). The caller gets `public`; `detail` names dom0's internals
    /// and goes to the journal only.
    #[error("{public}")]
    Dom0 { public: &'static str, detail: String },
}

impl From<SysfsError> for ApiError {
    fn from(e: SysfsError) -> ApiError {
        ApiError::dom0(
            "dom0's PCI devices cannot be read; nothing was changed by this call. A dom0 administrator can find \
             the cause in the journal",
            e.to_string(),
        )
    }
}

impl From<QubesdError> for ApiError {
    fn from(e: QubesdError) -> ApiError {
        ApiError::dom0(
            "qubesd, which keeps dom0's record of PCI assignments, did not answer as expected; nothing was \
             changed by this call. Try again; if it persists, a dom0 administrator can find the cause in the \
             journal",
            e.to_string(),
        )
    }
}

impl ApiError {
    /// A failure inside dom0: `detail` is logged here, the caller sees `public`.
    pub fn dom0(public: &'static str, detail: String) -> ApiError {
        tracing::error!(detail = qubes_pci_rpc::reply::escape_controls(&detail), "{public}");
        ApiError::Dom0 { public, detail }
    }

    /// qubesd had the whole request for a change and did not answer.
    pub fn unanswered(e: &QubesdError) -> ApiError {
        let detail = e.to_string();
        tracing::error!(
            detail = qubes_pci_rpc::reply::escape_controls(&detail),
            "qubesd did not answer a change"
        );
        ApiError::Unanswered { detail }
    }

    /// The detail of a dom0 failure, for dom0's own commands.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Dom0 { public, detail } => format!("{public} ({detail})"),
            ApiError::Unanswered { detail } => format!("{self} ({detail})"),
            other => other.to_string(),
        }
    }

    pub fn kind(&self) -> ExceptionKind {
        match self {
            ApiError::Decode(_) | ApiError::Protocol(_) => ExceptionKind::ProtocolError,
            ApiError::PermissionDenied { .. } => ExceptionKind::PermissionDenied,
            ApiError::NoSuchQube(_) => ExceptionKind::QubesVMNotFoundError,
            ApiError::DeviceNotFound(_) => ExceptionKind::DeviceNotFound,
            ApiError::AlreadyAssigned(_) => ExceptionKind::DeviceAlreadyAssigned,
            ApiError::NotAssigned(_) => ExceptionKind::DeviceNotAssigned,
            ApiError::AlreadyAttached(_) => ExceptionKind::DeviceAlreadyAttached,
            ApiError::NotHalted(_) => ExceptionKind::QubesVMNotHaltedError,
            ApiError::NotRunning(_) => ExceptionKind::QubesVMNotRunningError,
            ApiError::Value(_) => ExceptionKind::QubesValueError,
            ApiError::InvalidMode => ExceptionKind::QubesUnrecognizedDeviceAssignmentMode,
            ApiError::Relayed { name, .. } => ExceptionKind::from_name(name).unwrap_or(ExceptionKind::QubesException),
            ApiError::Qubes(_) | ApiError::Dom0 { .. } | ApiError::Unanswered { .. } => ExceptionKind::QubesException,
        }
    }

    /// The text-protocol reply. A policy refusal is not sent as upstream's
    /// `PermissionDenied`, which `qubesadmin` maps to a class outside its
    /// `QubesException` (so `qvm-pci` would crash with a traceback):
    /// * a refused read `qvm-pci list` may skip is `QubesVMNotFoundError`:
    ///   `qvm-pci list`, which reads every qube, then skips that qube as it
    ///   skips qubes the caller cannot see, instead of failing for all of
    ///   them;
    /// * any other refusal is `QubesDaemonAccessError`, the class
    ///   `qubesadmin` raises when qrexec itself refuses a call, so a script
    ///   handles both refusals the same way. A refused `Available` of dom0,
    ///   where the devices are, is one: `qvm-pci list` then says the caller
    ///   has no access, instead of listing no device.
    ///
    /// qubesd's own refusals keep their name.
    pub fn to_reply(&self) -> Reply {
        let named = |name: &str| Reply::Named {
            name: name.to_owned(),
            message: self.to_string(),
        };
        match self {
            ApiError::PermissionDenied { skippable: true, .. } => named("QubesVMNotFoundError"),
            ApiError::PermissionDenied { .. } => named("QubesDaemonAccessError"),
            ApiError::Relayed { name, .. } => named(name),
            _ => Reply::error(self.kind(), self.to_string()),
        }
    }
}
