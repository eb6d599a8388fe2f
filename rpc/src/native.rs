//! The native protocol: the same qrexec services and the same policy, with
//! a typed, postcard-encoded request in the payload and a typed reply.
//!
//! ```text
//! frame = magic (4 bytes: 00 'Q' 'P' 'N') | length (u32, little-endian) | body (postcard, `length` bytes)
//! ```
//!
//! A request body is [`NativeRequest`], a reply body [`NativeReply`]; both
//! start with the protocol version ([`VERSION`]). The magic starts with a
//! NUL byte, which no text payload can hold, so a service tells the two
//! protocols apart by the first four bytes of the payload. The service and
//! argument (`admin.vm.device.pci.Assign+dom0+00_14.0`) stay in the qrexec
//! call, where the policy sees them.

use serde::{Deserialize, Serialize};

use crate::assignment::{Assignment, AssignmentMode};
use crate::device::{DeviceInfo, DeviceRef, Wild};
use crate::ident::{DeviceId, PciPath, QubeName};
use crate::options::PciOptions;
use crate::reply::ExceptionKind;
use crate::request::MAX_REQUEST;
use crate::DecodeError;

pub const MAGIC: [u8; 4] = [0x00, b'Q', b'P', b'N'];
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
const HEADER: usize = 8;

/// What a call sends beyond its service and argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// `Available`, `Assigned`, `Attached`, `Unassign`, `Detach`.
    Empty,
    /// `Assign` and `Attach`: the assignment; `device_id` may narrow a
    /// port-only argument.
    Assignment {
        mode: AssignmentMode,
        options: PciOptions,
        device_id: Option<String>,
    },
    /// `Set.assignment`.
    Mode(AssignmentMode),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeRequest {
    pub version: u16,
    pub body: RequestBody,
}

/// One device of `Available`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub backend: String,
    pub port: String,
    pub device_id: String,
    pub vendor: Option<String>,
    pub product: Option<String>,
    /// The `_key` extra data (`sbdf`, `class_name`, `driver`, …).
    pub data: Vec<(String, String)>,
}

/// One line of `Assigned` or `Attached`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentEntry {
    pub backend: String,
    pub port: String,
    /// `*` for a port-only assignment.
    pub device_id: String,
    pub frontend: Option<String>,
    pub mode: AssignmentMode,
    pub options: Vec<(String, String)>,
}

/// A successful result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Done,
    Devices(Vec<DeviceEntry>),
    Assignments(Vec<AssignmentEntry>),
}

/// A refusal, with what it concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeError {
    /// [`ExceptionKind::code`] of `kind`.
    pub code: u8,
    /// The exception name the text protocol would send.
    pub kind: String,
    pub message: String,
    /// The device the call named (`dom0:PORT:DEVICE_ID`), when it named one.
    pub device: Option<String>,
    /// The qube the call was for.
    pub qube: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeReply {
    pub version: u16,
    pub result: Result<Answer, NativeError>,
}

/// True when `payload` is a native frame.
pub fn is_native(payload: &[u8]) -> bool {
    payload.starts_with(&MAGIC)
}

/// Frames a body.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, DecodeError> {
    let bytes = postcard::to_allocvec(body).map_err(|_| DecodeError::Framing("cannot encode native body"))?;
    let len = u32::try_from(bytes.len()).map_err(|_| DecodeError::TooLong)?;
    let mut out = Vec::with_capacity(HEADER + bytes.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(out)
}

/// Reads one whole frame: the magic, a length that matches what follows
/// (at most [`MAX_REQUEST`]), a body that decodes with nothing left over.
pub fn decode<'a, T: Deserialize<'a>>(untrusted: &'a [u8]) -> Result<T, DecodeError> {
    let rest = untrusted
        .strip_prefix(&MAGIC[..])
        .ok_or(DecodeError::Framing("not a native frame"))?;
    let (len, body) = rest
        .split_at_checked(4)
        .ok_or(DecodeError::Framing("native frame too short"))?;
    let len: [u8; 4] = len
        .try_into()
        .map_err(|_| DecodeError::Framing("native frame too short"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REQUEST {
        return Err(DecodeError::TooLong);
    }
    if body.len() != len {
        return Err(DecodeError::Framing("native frame length does not match its body"));
    }
    let (value, left) =
        postcard::take_from_bytes(body).map_err(|_| DecodeError::Framing("native body does not decode"))?;
    if !left.is_empty() {
        return Err(DecodeError::Framing("bytes after the native body"));
    }
    Ok(value)
}

impl NativeRequest {
    pub fn new(body: RequestBody) -> NativeRequest {
        NativeRequest { version: VERSION, body }
    }

    /// Decodes a request and checks its version.
    pub fn decode(untrusted: &[u8]) -> Result<NativeRequest, DecodeError> {
        let r: NativeRequest = decode(untrusted)?;
        if r.version != VERSION {
            return Err(DecodeError::Framing("unsupported native protocol version"));
        }
        Ok(r)
    }

    /// The text payload with the same meaning, for the method named by the
    /// call: an assignment serialization, a mode, or nothing.
    pub fn to_text_payload(&self) -> Result<Vec<u8>, DecodeError> {
        Ok(match &self.body {
            RequestBody::Empty => Vec::new(),
            RequestBody::Mode(m) => m.as_str().as_bytes().to_vec(),
            RequestBody::Assignment {
                mode,
                options,
                device_id,
            } => {
                let mut out = String::new();
                if let Some(d) = device_id {
                    crate::props::pack(&mut out, "device_id", &DeviceId::parse(d)?.to_string())?;
                }
                crate::props::pack(&mut out, "mode", mode.as_str())?;
                for (k, v) in options.to_pairs() {
                    crate::props::pack(&mut out, &format!("_{k}"), &v)?;
                }
                out.into_bytes()
            }
        })
    }
}

impl From<&DeviceInfo> for DeviceEntry {
    fn from(d: &DeviceInfo) -> DeviceEntry {
        DeviceEntry {
            backend: d.backend.to_string(),
            port: d.port.to_string(),
            device_id: d.device_id.to_string(),
            vendor: d.vendor.clone(),
            product: d.product.clone(),
            data: d.data.clone(),
        }
    }
}

impl From<&Assignment> for AssignmentEntry {
    fn from(a: &Assignment) -> AssignmentEntry {
        AssignmentEntry {
            backend: a.device.backend.to_string(),
            port: a.device.port.to_string(),
            device_id: a.device.device_id.to_string(),
            frontend: a.frontend.as_ref().map(|q| q.to_string()),
            mode: a.mode,
            options: a.options.clone(),
        }
    }
}

impl AssignmentEntry {
    /// Back to the validated type (a client checks what a service sent).
    pub fn to_assignment(&self) -> Result<Assignment, DecodeError> {
        Ok(Assignment {
            device: DeviceRef {
                backend: QubeName::parse(&self.backend)?,
                port: match self.port.as_str() {
                    "*" => Wild::Any,
                    p => Wild::Is(PciPath::parse(p)?),
                },
                device_id: match self.device_id.as_str() {
                    "*" => Wild::Any,
                    d => Wild::Is(DeviceId::parse(d)?),
                },
            },
            frontend: self.frontend.as_deref().map(QubeName::parse).transpose()?,
            mode: self.mode,
            options: self.options.clone(),
        })
    }
}

/// The entries of a text `Available` body (`port:device_id props`), so a
/// client shows both protocols the same way.
pub fn devices_from_text(untrusted_body: &[u8], backend: &QubeName) -> Result<Vec<DeviceEntry>, DecodeError> {
    lines(untrusted_body)?
        .map(|line| {
            let (head, rest) = line.split_once(' ').ok_or(DecodeError::MalformedProperties)?;
            let (port, device_id) = head.split_once(':').ok_or(DecodeError::MalformedProperties)?;
            let port = PciPath::parse(port)?;
            let device_id = DeviceId::parse(device_id)?;
            let p = crate::props::unpack(rest.as_bytes())?;
            Ok(DeviceEntry {
                backend: backend.to_string(),
                port: port.to_string(),
                device_id: device_id.to_string(),
                vendor: p.get("vendor").map(str::to_owned),
                product: p.get("product").map(str::to_owned),
                data: p.options,
            })
        })
        .collect()
}

/// The entries of a text `Assigned`/`Attached` body
/// (`backend+port:device_id props`).
pub fn assignments_from_text(untrusted_body: &[u8]) -> Result<Vec<AssignmentEntry>, DecodeError> {
    Ok(Assignment::parse_lines(untrusted_body)?
        .iter()
        .map(AssignmentEntry::from)
        .collect())
}

fn lines(untrusted_body: &[u8]) -> Result<impl Iterator<Item = &str>, DecodeError> {
    let text = std::str::from_utf8(untrusted_body).map_err(|_| DecodeError::NotAscii)?;
    Ok(text.lines().filter(|l| !l.is_empty()))
}

impl NativeError {
    pub fn new(kind: ExceptionKind, message: String, device: Option<String>, qube: Option<String>) -> NativeError {
        NativeError {
            code: kind.code(),
            kind: kind.name().to_owned(),
            message,
            device,
            qube,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_text_equivalent() {
        let r = NativeRequest::new(RequestBody::Assignment {
            mode: AssignmentMode::Required,
            options: PciOptions {
                no_strict_reset: true,
                permissive: false,
            },
            device_id: Some("0x8086:0x8cb1::p0c0330".into()),
        });
        let bytes = encode(&r).unwrap();
        assert!(is_native(&bytes));
        assert_eq!(NativeRequest::decode(&bytes).unwrap(), r);
        assert_eq!(
            String::from_utf8(r.to_text_payload().unwrap()).unwrap(),
            "device_id='0x8086:0x8cb1::p0c0330' mode='required' _no-strict-reset='True'"
        );
        assert_eq!(
            NativeRequest::new(RequestBody::Mode(AssignmentMode::AutoAttach))
                .to_text_payload()
                .unwrap(),
            b"auto-attach"
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let good = encode(&NativeRequest::new(RequestBody::Empty)).unwrap();
        for n in 0..good.len() {
            assert!(NativeRequest::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(NativeRequest::decode(&extra).is_err());
        let mut long = good.clone();
        long[4..8].copy_from_slice(&(MAX_REQUEST as u32 + 1).to_le_bytes());
        assert_eq!(NativeRequest::decode(&long), Err(DecodeError::TooLong));
        let v2 = encode(&NativeRequest {
            version: 2,
            body: RequestBody::Empty,
        })
        .unwrap();
        assert!(NativeRequest::decode(&v2).is_err());
        assert!(!is_native(b"mode='required'"));
        let bad_id = NativeRequest::new(RequestBody::Assignment {
            mode: AssignmentMode::Required,
            options: PciOptions::default(),
            device_id: Some("'; rm".into()),
        });
        assert!(bad_id.to_text_payload().is_err());
    }

    #[test]
    fn reply_round_trip() {
        let r = NativeReply {
            version: VERSION,
            result: Err(NativeError::new(
                ExceptionKind::DeviceNotAssigned,
                "pci device dom0:00_14.0:* not assigned to work".into(),
                Some("dom0:00_14.0:*".into()),
                Some("work".into()),
            )),
        };
        let back: NativeReply = decode(&encode(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn text_bodies_parse_into_the_same_entries() {
        let info = DeviceInfo {
            backend: QubeName::dom0(),
            port: PciPath::parse("00_14.0").unwrap(),
            device_id: DeviceId::parse("0x8086:0x8cb1::p0c0330").unwrap(),
            vendor: Some("Intel Corporation".into()),
            product: None,
            data: vec![("sbdf".into(), "0000:00:14.0".into())],
        };
        let parsed = devices_from_text(info.to_line().unwrap().as_bytes(), &QubeName::dom0()).unwrap();
        assert_eq!(parsed, vec![DeviceEntry::from(&info)]);
        let a = Assignment {
            device: DeviceRef::from_qarg("dom0+00_14.0").unwrap(),
            frontend: Some(QubeName::parse("work").unwrap()),
            mode: AssignmentMode::Required,
            options: vec![("no-strict-reset".into(), "True".into())],
        };
        let parsed = assignments_from_text(a.to_line().unwrap().as_bytes()).unwrap();
        assert_eq!(parsed, vec![AssignmentEntry::from(&a)]);
        assert!(assignments_from_text(b"dom0+00_14.0:* mode='required' port_id='00_15.0'\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            framed.extend_from_slice(&bytes);
            let _ = NativeRequest::decode(&framed);
            let _ = decode::<NativeReply>(&framed);
        }
    }
}
