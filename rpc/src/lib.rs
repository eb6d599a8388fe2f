//! Wire model and codecs of the Qubes Admin API PCI methods
//! (`admin.vm.device.pci.*`), as qubesd speaks them.
//!
//! Pure code: nothing here touches the filesystem or the process state.
//! Values from a caller start as `untrusted_*` fields and become typed values
//! only through the validating functions of this crate.

pub mod assignment;
pub mod device;
pub mod extension;
pub mod ident;
pub mod json;
pub mod method;
pub mod native;
pub mod options;
pub mod props;
pub mod reply;
pub mod request;

pub use assignment::{Assignment, AssignmentMode};
pub use device::{DeviceInfo, DeviceRef, Wild};
pub use ident::{DeviceId, Interface, PathHop, PciPath, QubeName, QubeRef, Sbdf};
pub use method::Method;
pub use options::PciOptions;
pub use reply::{ExceptionKind, Reply};
pub use request::{Request, Target, UntrustedRequest, UntrustedTarget, MAX_REQUEST};

/// Why a request, identifier or payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request is longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("framing error: {0}")]
    Framing(&'static str),
    #[error("no such method: {0}")]
    UnknownMethod(String),
    #[error("argument contains characters qrexec never passes")]
    InvalidArgChars,
    #[error("invalid qube name: {0}")]
    InvalidQubeName(String),
    #[error("unsupported destination keyword: @{0}")]
    InvalidTargetKeyword(String),
    #[error("invalid PCI address: {0}")]
    InvalidSbdf(String),
    #[error("invalid PCI port id: {0} (expected a PCI path such as 00_14.0 or 00_1c.0-00_00.0)")]
    InvalidPortId(String),
    #[error("invalid device id: {0} (expected vendor:product:serial:interfaces, such as 0x8086:0x8cb1::p0c0330)")]
    InvalidDeviceId(String),
    #[error("invalid device interface: {0}")]
    InvalidInterface(String),
    #[error("invalid device argument: {0} (expected backend+port_id[+device_id], such as dom0+00_14.0+_)")]
    InvalidDeviceArg(String),
    #[error("payload is not ASCII")]
    NotAscii,
    #[error("malformed property list")]
    MalformedProperties,
    #[error("invalid characters in property name: {0}")]
    InvalidPropertyName(String),
    #[error("{0}: values are written in single quotes, as key='value'")]
    UnquotedValue(String),
    #[error("invalid characters in the value of property {0}")]
    InvalidPropertyValue(String),
    #[error("unexpected property {0}")]
    UnknownProperty(String),
    #[error("property {key} is {got}, expected {expected}")]
    UnexpectedProperty { key: String, got: String, expected: String },
    #[error("invalid assignment mode: {0} (expected required, auto-attach or ask-to-attach)")]
    InvalidMode(String),
    #[error("unknown option {0}: PCI assignments take only no-strict-reset and permissive")]
    UnknownOption(String),
    #[error("option {name} is {value:?}: the value must be True or False")]
    InvalidOptionValue { name: String, value: String },
    #[error("missing qrexec variable {0}")]
    MissingEnv(&'static str),
}
