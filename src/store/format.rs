//! The store file: a header (magic, format version, payload length, CRC-32)
//! and a postcard-encoded body. The body uses plain strings so that the
//! format does not move when the in-memory types do; every identifier is
//! validated again by the same parsers as API input when it is loaded.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "QPCISTOR"
//! 8       4     format version, u32 little-endian
//! 12      4     body length, u32 little-endian
//! 16      4     CRC-32 (IEEE) of bytes 8..16 and of the body, little-endian
//! 20      n     body (postcard)
//! ```

use qubes_pci_rpc::{AssignmentMode, DeviceId, PathHop, PciOptions, PciPath, QubeName, Sbdf, Wild};
use serde::{Deserialize, Serialize};

use super::model::{Hold, Record, State};

pub const MAGIC: &[u8; 8] = b"QPCISTOR";
/// The version this build writes.
pub const VERSION: u32 = 1;
const HEADER: usize = 20;
/// A store larger than this is refused rather than read into memory.
pub const MAX_BODY: usize = 64 << 20;

/// Why a store file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a qubes-pci-admin store (bad magic)")]
    BadMagic,
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    #[error("format version {0}, but this build reads only version {VERSION}")]
    UnknownVersion(u32),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("body does not decode: {0}")]
    Body(String),
    #[error("store is {0} bytes, more than the {MAX_BODY} this build accepts")]
    TooLarge(usize),
}

#[derive(Serialize, Deserialize)]
struct StateV1 {
    generation: u64,
    assignments: Vec<RecordV1>,
    holds: Vec<HoldV1>,
}

/// A PCI path: segment and `(bus, device, function)` hops.
#[derive(Serialize, Deserialize)]
struct PathV1 {
    segment: u16,
    hops: Vec<(u8, u8, u8)>,
}

/// `(segment, bus, device, function)`.
type SbdfV1 = (u16, u8, u8, u8);

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    frontend: String,
    port: PathV1,
    /// `None` for a port-only assignment (`*`).
    device_id: Option<String>,
    /// 0 manual (never written by this build), 1 ask-to-attach, 2 auto-attach, 3 required.
    mode: u8,
    no_strict_reset: bool,
    permissive: bool,
    sbdf: Option<SbdfV1>,
}

#[derive(Serialize, Deserialize)]
struct HoldV1 {
    qube: String,
    port: PathV1,
    sbdf: SbdfV1,
    device_id: String,
    no_strict_reset: bool,
    permissive: bool,
}

fn path_v1(p: &PciPath) -> PathV1 {
    PathV1 {
        segment: p.segment,
        hops: p.hops().iter().map(|h| (h.bus, h.device, h.function)).collect(),
    }
}

fn path_from(p: PathV1) -> Result<PciPath, FormatError> {
    let hops = p
        .hops
        .into_iter()
        .map(|(b, d, f)| PathHop::new(b, d, f))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| FormatError::Body("port: device or function out of range".into()))?;
    PciPath::new(p.segment, hops).ok_or_else(|| FormatError::Body("port: empty path".into()))
}

fn sbdf_v1(s: &Sbdf) -> SbdfV1 {
    (s.segment, s.bus, s.device, s.function)
}

fn sbdf_from((seg, bus, dev, func): SbdfV1) -> Result<Sbdf, FormatError> {
    Sbdf::new(seg, bus, dev, func).ok_or_else(|| FormatError::Body("address: device or function out of range".into()))
}

fn mode_v1(m: AssignmentMode) -> u8 {
    match m {
        AssignmentMode::Manual => 0,
        AssignmentMode::AskToAttach => 1,
        AssignmentMode::AutoAttach => 2,
        AssignmentMode::Required => 3,
    }
}

fn mode_from(m: u8) -> Result<AssignmentMode, FormatError> {
    match m {
        0 => Ok(AssignmentMode::Manual),
        1 => Ok(AssignmentMode::AskToAttach),
        2 => Ok(AssignmentMode::AutoAttach),
        3 => Ok(AssignmentMode::Required),
        other => Err(FormatError::Body(format!("mode: unknown value {other}"))),
    }
}

fn checksum(version: u32, len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// The whole file for `state`.
pub fn encode(state: &State) -> Result<Vec<u8>, FormatError> {
    let v1 = StateV1 {
        generation: state.generation,
        assignments: state
            .assignments
            .iter()
            .map(|r| RecordV1 {
                frontend: r.frontend.to_string(),
                port: path_v1(&r.port),
                device_id: r.device_id.as_option().map(|d| d.to_string()),
                mode: mode_v1(r.mode),
                no_strict_reset: r.options.no_strict_reset,
                permissive: r.options.permissive,
                sbdf: r.sbdf.as_ref().map(sbdf_v1),
            })
            .collect(),
        holds: state
            .holds
            .iter()
            .map(|h| HoldV1 {
                qube: h.qube.to_string(),
                port: path_v1(&h.port),
                sbdf: sbdf_v1(&h.sbdf),
                device_id: h.device_id.to_string(),
                no_strict_reset: h.options.no_strict_reset,
                permissive: h.options.permissive,
            })
            .collect(),
    };
    let body = postcard::to_allocvec(&v1).map_err(|e| FormatError::Body(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| FormatError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(VERSION, len, &body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Checks the header and decodes the body of a whole store file.
pub fn decode(bytes: &[u8]) -> Result<State, FormatError> {
    if bytes.len() < HEADER {
        return Err(if bytes.get(..bytes.len().min(8)) == MAGIC.get(..bytes.len().min(8)) {
            FormatError::Truncated(bytes.len())
        } else {
            FormatError::BadMagic
        });
    }
    if bytes.get(..8) != Some(&MAGIC[..]) {
        return Err(FormatError::BadMagic);
    }
    let (Some(version), Some(len), Some(stored)) = (u32_at(bytes, 8), u32_at(bytes, 12), u32_at(bytes, 16)) else {
        return Err(FormatError::Truncated(bytes.len()));
    };
    let body = bytes.get(HEADER..).unwrap_or_default();
    if body.len() != len as usize {
        return Err(FormatError::Truncated(bytes.len()));
    }
    let computed = checksum(version, len, body);
    if computed != stored {
        return Err(FormatError::Checksum { stored, computed });
    }
    match version {
        1 => decode_v1(body),
        v => Err(FormatError::UnknownVersion(v)),
    }
}

fn decode_v1(body: &[u8]) -> Result<State, FormatError> {
    let v1: StateV1 = postcard::from_bytes(body).map_err(|e| FormatError::Body(e.to_string()))?;
    let bad = |what: &str, e: qubes_pci_rpc::DecodeError| FormatError::Body(format!("{what}: {e}"));
    let devid = |s: Option<String>| -> Result<Wild<DeviceId>, FormatError> {
        Ok(match s {
            None => Wild::Any,
            Some(d) => Wild::Is(DeviceId::parse(&d).map_err(|e| bad("device id", e))?),
        })
    };
    let assignments = v1
        .assignments
        .into_iter()
        .map(|r| {
            Ok(Record {
                frontend: QubeName::parse(&r.frontend).map_err(|e| bad("qube", e))?,
                port: path_from(r.port)?,
                device_id: devid(r.device_id)?,
                mode: mode_from(r.mode)?,
                options: PciOptions {
                    no_strict_reset: r.no_strict_reset,
                    permissive: r.permissive,
                },
                sbdf: r.sbdf.map(sbdf_from).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    let holds = v1
        .holds
        .into_iter()
        .map(|h| {
            Ok(Hold {
                qube: QubeName::parse(&h.qube).map_err(|e| bad("qube", e))?,
                port: path_from(h.port)?,
                sbdf: sbdf_from(h.sbdf)?,
                device_id: DeviceId::parse(&h.device_id).map_err(|e| bad("device id", e))?,
                options: PciOptions {
                    no_strict_reset: h.no_strict_reset,
                    permissive: h.permissive,
                },
            })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    Ok(State {
        generation: v1.generation,
        assignments,
        holds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            generation: 7,
            assignments: vec![Record {
                frontend: QubeName::parse("sys-usb").unwrap(),
                port: PciPath::parse("00_14.0").unwrap(),
                device_id: Wild::Is(DeviceId::parse("0x8086:0x8cb1::p0c0330").unwrap()),
                mode: AssignmentMode::Required,
                options: PciOptions {
                    no_strict_reset: true,
                    permissive: false,
                },
                sbdf: Some(Sbdf::parse("0000:00:14.0").unwrap()),
            }],
            holds: vec![Hold {
                qube: QubeName::parse("sys-usb").unwrap(),
                port: PciPath::parse("00_14.0").unwrap(),
                sbdf: Sbdf::parse("0000:00:14.0").unwrap(),
                device_id: DeviceId::parse("0x8086:0x8cb1::p0c0330").unwrap(),
                options: PciOptions::default(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
        assert_eq!(decode(&encode(&State::default()).unwrap()).unwrap(), State::default());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode(&b).is_err(), "flip of bit {bit} of byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn truncation_and_unknown_version_are_reported() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let mut v2 = bytes.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let len = u32::from_le_bytes(v2[12..16].try_into().unwrap());
        let crc = checksum(2, len, &v2[20..]);
        v2[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v2), Err(FormatError::UnknownVersion(2)));
    }

    #[test]
    fn invalid_identifiers_inside_a_valid_checksum_are_refused() {
        let mut s = StateV1 {
            generation: 1,
            assignments: vec![],
            holds: vec![HoldV1 {
                qube: "../../../etc".into(),
                port: PathV1 {
                    segment: 0,
                    hops: vec![(0, 0x14, 0)],
                },
                sbdf: (0, 0, 0x14, 0),
                device_id: "0x8086:0x8cb1::p0c0330".into(),
                no_strict_reset: false,
                permissive: false,
            }],
        };
        let body = postcard::to_allocvec(&s).unwrap();
        assert!(matches!(decode_v1(&body), Err(FormatError::Body(_))));
        s.holds[0].qube = "work".into();
        s.holds[0].sbdf = (0, 0, 0x20, 0);
        assert!(matches!(
            decode_v1(&postcard::to_allocvec(&s).unwrap()),
            Err(FormatError::Body(_))
        ));
        s.holds[0].sbdf = (0, 0, 0x14, 0);
        s.holds[0].port.hops = vec![(0, 0x14, 9)];
        assert!(matches!(
            decode_v1(&postcard::to_allocvec(&s).unwrap()),
            Err(FormatError::Body(_))
        ));
        s.holds.clear();
        assert!(decode_v1(&postcard::to_allocvec(&s).unwrap()).is_ok());
    }
}
