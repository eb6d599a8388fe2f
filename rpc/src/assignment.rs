//! Device assignments: a device reference, the qube it is for, a mode and
//! options, with upstream's serialization.

use std::fmt;

use crate::device::{DeviceRef, Wild, DEVCLASS};
use crate::ident::{DeviceId, PciPath, QubeName};
use crate::props;
use crate::DecodeError;

/// How an assigned device reaches its qube.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum AssignmentMode {
    Manual,
    AskToAttach,
    AutoAttach,
    Required,
}

impl AssignmentMode {
    pub fn parse(untrusted: &str) -> Result<AssignmentMode, DecodeError> {
        Ok(match untrusted {
            "manual" => AssignmentMode::Manual,
            "ask-to-attach" => AssignmentMode::AskToAttach,
            "auto-attach" => AssignmentMode::AutoAttach,
            "required" => AssignmentMode::Required,
            other => return Err(DecodeError::InvalidMode(other.to_owned())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentMode::Manual => "manual",
            AssignmentMode::AskToAttach => "ask-to-attach",
            AssignmentMode::AutoAttach => "auto-attach",
            AssignmentMode::Required => "required",
        }
    }
}

impl fmt::Display for AssignmentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device assignment (upstream's `DeviceAssignment`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub device: DeviceRef,
    pub frontend: Option<QubeName>,
    pub mode: AssignmentMode,
    /// Options without the leading `_`, in the order given.
    pub options: Vec<(String, String)>,
}

impl Assignment {
    /// The property list: `device_id port_id devclass backend_domain mode
    /// [frontend_domain] [_option…]`.
    pub fn serialize(&self) -> Result<String, DecodeError> {
        let mut out = String::new();
        self.device.pack_into(&mut out)?;
        props::pack(&mut out, "mode", self.mode.as_str())?;
        if let Some(f) = &self.frontend {
            props::pack(&mut out, "frontend_domain", f.as_str())?;
        }
        for (k, v) in &self.options {
            // `_` alone would read back as a plain property, not an option
            // (found by fuzzing qubes.xml: `<option name="">`).
            if k.is_empty() {
                return Err(DecodeError::InvalidPropertyName("_".to_owned()));
            }
            props::pack(&mut out, &format!("_{k}"), v)?;
        }
        Ok(out)
    }

    /// An `Assigned`/`Attached` line: `backend+port:devid <serialization>\n`.
    pub fn to_line(&self) -> Result<String, DecodeError> {
        Ok(format!("{} {}\n", self.device.list_key(), self.serialize()?))
    }

    /// Parses an Assign/Attach payload against the device named by the
    /// call's argument. Properties that name the device must agree with it;
    /// a payload `device_id` may narrow a wildcard argument.
    pub fn deserialize(untrusted_payload: &[u8], expected: &DeviceRef) -> Result<Assignment, DecodeError> {
        let parsed = props::unpack(untrusted_payload)?;
        let mut device = expected.clone();
        let mut mode = AssignmentMode::Manual;
        let mut frontend = None;
        for (key, value) in &parsed.properties {
            let mismatch = || DecodeError::UnexpectedProperty {
                key: key.clone(),
                got: value.clone(),
                expected: match key.as_str() {
                    "backend_domain" => expected.backend.to_string(),
                    "port_id" => expected.port.to_string(),
                    "devclass" => DEVCLASS.to_owned(),
                    _ => expected.device_id.to_string(),
                },
            };
            match key.as_str() {
                "backend_domain" if value != expected.backend.as_str() => return Err(mismatch()),
                "port_id" if *value != expected.port.to_string() => return Err(mismatch()),
                "devclass" if value != DEVCLASS => return Err(mismatch()),
                "backend_domain" | "port_id" | "devclass" => {}
                "device_id" => {
                    let given = match value.as_str() {
                        "*" => Wild::Any,
                        v => Wild::Is(DeviceId::parse(v)?),
                    };
                    match (&expected.device_id, given) {
                        (Wild::Any, g) => device.device_id = g,
                        (Wild::Is(e), Wild::Is(g)) if *e == g => {}
                        _ => return Err(mismatch()),
                    }
                }
                "mode" => mode = AssignmentMode::parse(value)?,
                "frontend_domain" => frontend = Some(QubeName::parse(value)?),
                other => return Err(DecodeError::UnknownProperty(other.to_owned())),
            }
        }
        Ok(Assignment {
            device,
            frontend,
            mode,
            options: parsed.options,
        })
    }

    /// The lines of an `Assigned`/`Attached` body
    /// (`backend+port:device_id <serialization>`), each checked against its key.
    pub fn parse_lines(untrusted_body: &[u8]) -> Result<Vec<Assignment>, DecodeError> {
        let text = std::str::from_utf8(untrusted_body).map_err(|_| DecodeError::NotAscii)?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let (head, rest) = line.split_once(' ').ok_or(DecodeError::MalformedProperties)?;
                let (backend, ident) = head.split_once('+').ok_or(DecodeError::MalformedProperties)?;
                let (port, device_id) = ident.split_once(':').ok_or(DecodeError::MalformedProperties)?;
                let expected = DeviceRef {
                    backend: QubeName::parse(backend)?,
                    port: match port {
                        "*" => Wild::Any,
                        p => Wild::Is(PciPath::parse(p)?),
                    },
                    device_id: match device_id {
                        "*" => Wild::Any,
                        d => Wild::Is(DeviceId::parse(d)?),
                    },
                };
                Assignment::deserialize(rest.as_bytes(), &expected)
            })
            .collect()
    }

    /// The concrete port, when the assignment names one.
    pub fn port(&self) -> Option<&PciPath> {
        self.device.port.as_option()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(q: &str) -> DeviceRef {
        DeviceRef::from_qarg(q).unwrap()
    }

    #[test]
    fn upstream_serialization() {
        let a = Assignment {
            device: dev("dom0+00_14.0+0x8086+0x8cb1++p0c0330"),
            frontend: Some(QubeName::parse("work").unwrap()),
            mode: AssignmentMode::Required,
            options: vec![("no-strict-reset".into(), "True".into())],
        };
        let s = a.serialize().unwrap();
        assert_eq!(s, "device_id='0x8086:0x8cb1::p0c0330' port_id='00_14.0' devclass='pci' backend_domain='dom0' mode='required' frontend_domain='work' _no-strict-reset='True'");
        assert_eq!(Assignment::deserialize(s.as_bytes(), &a.device).unwrap(), a);
        assert_eq!(
            a.to_line().unwrap(),
            format!("dom0+00_14.0:0x8086:0x8cb1::p0c0330 {s}\n")
        );
    }

    #[test]
    fn payload_narrows_wildcard_device() {
        let a = Assignment::deserialize(
            b"device_id='0x8086:0x8cb1::p0c0330' mode='required'",
            &dev("dom0+00_14.0+_"),
        )
        .unwrap();
        assert_eq!(a.device.device_id.to_string(), "0x8086:0x8cb1::p0c0330");
        assert_eq!(a.mode, AssignmentMode::Required);
    }

    #[test]
    fn mismatches_and_unknown_keys_fail() {
        let d = dev("dom0+00_14.0+0x8086+0x8cb1++p0c0330");
        for p in [
            &b"backend_domain='sys-usb' mode='required'"[..],
            b"port_id='00_15.0'",
            b"devclass='usb'",
            b"device_id='0x8086:0x0001::p0c0330'",
            b"mode='sometimes'",
            b"frontend_domain='../x'",
            b"color='red'",
        ] {
            assert!(
                Assignment::deserialize(p, &d).is_err(),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!(Assignment::deserialize(b"", &d).unwrap().mode, AssignmentMode::Manual);
    }
}
