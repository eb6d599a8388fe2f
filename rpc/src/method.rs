//! The eight PCI methods of the R4.3 Admin API and their generic rules.

use std::fmt;

use crate::DecodeError;

/// Whether a method takes an argument or a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Required,
    Optional,
    Forbidden,
}

/// An `admin.vm.device.pci.*` method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Available,
    Assigned,
    Attached,
    Assign,
    Unassign,
    Attach,
    Detach,
    SetAssignment,
}

/// The common prefix of every method this service answers.
pub const PREFIX: &str = "admin.vm.device.pci.";

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Available,
        Method::Assigned,
        Method::Attached,
        Method::Assign,
        Method::Unassign,
        Method::Attach,
        Method::Detach,
        Method::SetAssignment,
    ];

    /// The part after `admin.vm.device.pci.`.
    pub fn short_name(self) -> &'static str {
        match self {
            Method::Available => "Available",
            Method::Assigned => "Assigned",
            Method::Attached => "Attached",
            Method::Assign => "Assign",
            Method::Unassign => "Unassign",
            Method::Attach => "Attach",
            Method::Detach => "Detach",
            Method::SetAssignment => "Set.assignment",
        }
    }

    /// The full qrexec service name.
    pub fn name(self) -> String {
        format!("{PREFIX}{}", self.short_name())
    }

    pub fn parse(untrusted: &str) -> Result<Method, DecodeError> {
        untrusted
            .strip_prefix(PREFIX)
            .and_then(|short| Method::ALL.into_iter().find(|m| m.short_name() == short))
            .ok_or_else(|| DecodeError::UnknownMethod(crate::device::sanitize_value(untrusted)))
    }

    pub fn wants_arg(self) -> Want {
        match self {
            Method::Available | Method::Assigned | Method::Attached => Want::Optional,
            _ => Want::Required,
        }
    }

    pub fn wants_payload(self) -> Want {
        match self {
            Method::Assign | Method::SetAssignment => Want::Required,
            Method::Attach => Want::Optional,
            _ => Want::Forbidden,
        }
    }

    /// The canonical spelling of an argument of this method (`Available`: a
    /// port id; the others: `backend+port+device_id` in qrexec form), or
    /// `None` when it names nothing. Two spellings of one device have the
    /// same canonical form, so the policy is checked on it too.
    pub fn canonical_arg(self, untrusted: &str) -> Option<String> {
        if untrusted.is_empty() {
            return Some(String::new());
        }
        match self {
            Method::Available => crate::PciPath::parse(untrusted).ok().map(|p| p.to_string()),
            _ => crate::DeviceRef::from_qarg(untrusted).ok().map(|d| d.to_qarg()),
        }
    }

    /// Read-only methods go to `include/admin-local-ro` in the policy,
    /// the others (write or execute) to `include/admin-local-rwx`.
    pub fn is_read_only(self) -> bool {
        matches!(self, Method::Available | Method::Assigned | Method::Attached)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.short_name())
    }
}
