//! Replies: `0\0` + body, or `2\0` + exception type + `\0\0` + message + `\0`.

use std::fmt;

/// Exception type names that stock clients (`qubesadmin`) map to classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExceptionKind {
    PermissionDenied,
    ProtocolError,
    DeviceNotFound,
    DeviceAlreadyAssigned,
    DeviceNotAssigned,
    DeviceAlreadyAttached,
    QubesVMNotFoundError,
    QubesVMNotHaltedError,
    QubesVMNotRunningError,
    QubesValueError,
    QubesUnrecognizedDeviceAssignmentMode,
    QubesException,
}

impl ExceptionKind {
    pub const ALL: [ExceptionKind; 12] = [
        ExceptionKind::PermissionDenied,
        ExceptionKind::ProtocolError,
        ExceptionKind::DeviceNotFound,
        ExceptionKind::DeviceAlreadyAssigned,
        ExceptionKind::DeviceNotAssigned,
        ExceptionKind::DeviceAlreadyAttached,
        ExceptionKind::QubesVMNotFoundError,
        ExceptionKind::QubesVMNotHaltedError,
        ExceptionKind::QubesVMNotRunningError,
        ExceptionKind::QubesValueError,
        ExceptionKind::QubesUnrecognizedDeviceAssignmentMode,
        ExceptionKind::QubesException,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExceptionKind::PermissionDenied => "PermissionDenied",
            ExceptionKind::ProtocolError => "ProtocolError",
            ExceptionKind::DeviceNotFound => "DeviceNotFound",
            ExceptionKind::DeviceAlreadyAssigned => "DeviceAlreadyAssigned",
            ExceptionKind::DeviceNotAssigned => "DeviceNotAssigned",
            ExceptionKind::DeviceAlreadyAttached => "DeviceAlreadyAttached",
            ExceptionKind::QubesVMNotFoundError => "QubesVMNotFoundError",
            ExceptionKind::QubesVMNotHaltedError => "QubesVMNotHaltedError",
            ExceptionKind::QubesVMNotRunningError => "QubesVMNotRunningError",
            ExceptionKind::QubesValueError => "QubesValueError",
            ExceptionKind::QubesUnrecognizedDeviceAssignmentMode => "QubesUnrecognizedDeviceAssignmentMode",
            ExceptionKind::QubesException => "QubesException",
        }
    }

    /// A small number per kind: the native protocol's error code and the
    /// client's exit status (0 is success, 1 and 2 are the client's own
    /// failures).
    pub fn code(self) -> u8 {
        match self {
            ExceptionKind::PermissionDenied => 3,
            ExceptionKind::DeviceNotFound => 4,
            ExceptionKind::DeviceAlreadyAssigned => 5,
            ExceptionKind::DeviceNotAssigned => 6,
            ExceptionKind::DeviceAlreadyAttached => 7,
            ExceptionKind::QubesVMNotFoundError => 8,
            ExceptionKind::QubesVMNotHaltedError => 9,
            ExceptionKind::QubesVMNotRunningError => 10,
            ExceptionKind::QubesValueError => 11,
            ExceptionKind::QubesUnrecognizedDeviceAssignmentMode => 12,
            ExceptionKind::ProtocolError => 13,
            ExceptionKind::QubesException => 14,
        }
    }

    pub fn from_code(code: u8) -> Option<ExceptionKind> {
        ExceptionKind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn from_name(name: &str) -> Option<ExceptionKind> {
        ExceptionKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ExceptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A reply to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<u8>),
    Err {
        kind: ExceptionKind,
        message: String,
    },
    /// An exception under another class name that stock clients know
    /// (relayed from qubesd, or a client-side class such as
    /// `QubesDaemonAccessError`). The name is an ASCII identifier.
    Named {
        name: String,
        message: String,
    },
}

/// Whether `name` can stand as an exception class name on the wire.
pub fn is_exception_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Reply {
    pub fn error(kind: ExceptionKind, message: impl Into<String>) -> Reply {
        Reply::Err {
            kind,
            message: message.into(),
        }
    }

    /// The type digit: 0 for success, 2 for an exception.
    pub fn code(&self) -> u8 {
        match self {
            Reply::Ok(_) => 0,
            Reply::Err { .. } | Reply::Named { .. } => 2,
        }
    }

    /// The bytes on the wire. An error message never carries NUL (it would
    /// cut the frame), and `%` is doubled because the client formats the
    /// message with `%` before showing it.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ok(body) => {
                let mut out = Vec::with_capacity(body.len() + 2);
                out.extend_from_slice(b"0\0");
                out.extend_from_slice(body);
                out
            }
            Reply::Err { kind, message } => error_bytes(kind.name(), message),
            Reply::Named { name, message } => error_bytes(
                if is_exception_name(name) {
                    name
                } else {
                    "QubesException"
                },
                message,
            ),
        }
    }

    /// The exception class name of an error reply.
    pub fn exception_name(&self) -> Option<&str> {
        match self {
            Reply::Ok(_) => None,
            Reply::Err { kind, .. } => Some(kind.name()),
            Reply::Named { name, .. } => Some(name),
        }
    }

    /// Parses a reply, as a client does (for tests and the client tool).
    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        if let Some(body) = bytes.strip_prefix(b"0\0") {
            return Some(Reply::Ok(body.to_vec()));
        }
        let rest = bytes.strip_prefix(b"2\0")?;
        let mut parts = rest.splitn(4, |&b| b == 0);
        let name = std::str::from_utf8(parts.next()?)
            .ok()
            .filter(|n| is_exception_name(n))?;
        let _traceback = parts.next()?;
        let message = String::from_utf8_lossy(parts.next()?).replace("%%", "%");
        if parts.next()? != b"" {
            return None;
        }
        Some(match ExceptionKind::from_name(name) {
            Some(kind) => Reply::Err { kind, message },
            None => Reply::Named {
                name: name.to_owned(),
                message,
            },
        })
    }
}

/// `2\0NAME\0\0MESSAGE\0`: control characters in the message (NUL, which
/// would cut the frame, newlines, escape sequences, which would drive the
/// caller's terminal) are written as `\xNN`, and `%` is doubled because the
/// client formats the message with `%` before showing it.
fn error_bytes(name: &str, message: &str) -> Vec<u8> {
    let message = escape_controls(message).replace('%', "%%");
    format!("2\0{name}\0\0{message}\0").into_bytes()
}

/// `text` with every control character (C0, DEL, C1) written as `\xNN`:
/// for text that may carry bytes from a qube, before it goes into a reply
/// or a log line. Printable text, non-ASCII included, is kept.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_leave_0_1_2_to_the_client() {
        let mut codes: Vec<u8> = ExceptionKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ExceptionKind::ALL.len());
        assert!(codes.iter().all(|c| *c >= 3));
        for k in ExceptionKind::ALL {
            assert_eq!(ExceptionKind::from_code(k.code()), Some(k));
            assert_eq!(ExceptionKind::from_name(k.name()), Some(k));
        }
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(Reply::Ok(b"x\n".to_vec()).encode(), b"0\0x\n");
        assert_eq!(Reply::Ok(vec![]).encode(), b"0\0");
        assert_eq!(
            Reply::error(
                ExceptionKind::DeviceNotAssigned,
                "pci device 00_14.0 not attached to work"
            )
            .encode(),
            b"2\0DeviceNotAssigned\0\0pci device 00_14.0 not attached to work\0"
        );
        assert_eq!(
            Reply::error(ExceptionKind::QubesException, "100% a\0b").encode(),
            b"2\0QubesException\0\x00100%% a\\x00b\0"
        );
        assert_eq!(
            Reply::error(ExceptionKind::QubesValueError, "x \u{1b}[2J\nFAKE \u{9b}é").encode(),
            "2\0QubesValueError\0\0x \\x1b[2J\\x0aFAKE \\x9bé\0".as_bytes()
        );
    }

    #[test]
    fn decode_roundtrip() {
        for r in [
            Reply::Ok(b"a\0b".to_vec()),
            Reply::error(ExceptionKind::ProtocolError, "bad 50%"),
        ] {
            assert_eq!(Reply::decode(&r.encode()), Some(r));
        }
        assert_eq!(Reply::decode(b""), None);
        assert_eq!(
            Reply::decode(b"2\0QubesVMInUseError\0\0m\0"),
            Some(Reply::Named {
                name: "QubesVMInUseError".into(),
                message: "m".into()
            })
        );
        assert_eq!(Reply::decode(b"2\0No pe\0\0m\0"), None);
        assert_eq!(
            Reply::Named {
                name: "../x".into(),
                message: "m".into()
            }
            .encode(),
            b"2\0QubesException\0\0m\0"
        );
    }
}
