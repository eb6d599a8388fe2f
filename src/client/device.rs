//! How a user names a device on the command line: as qvm-pci does
//! (`dom0:PORT_ID`, `dom0:PORT_ID:DEVICE_ID`), by address or by
//! vendor:device id. Every name is looked up in `Available` and becomes the
//! port and the device's current id, so one device named two ways is one
//! assignment.

use qubes_pci_rpc::native::DeviceEntry;
use qubes_pci_rpc::{DecodeError, ExceptionKind, PciPath, Sbdf};

use super::Failure;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceName {
    Port(PciPath),
    /// `dom0:PORT_ID:DEVICE_ID`: a port and the identity expected there.
    PortAndId(PciPath, String),
    Address(Sbdf),
    Ids {
        vendor: u16,
        device: u16,
    },
}

/// A device named by its port, with its device id when it was looked up.
pub struct Resolved {
    pub port: PciPath,
    pub device_id: Option<String>,
    /// The device as `Available` lists it, when it is there.
    pub entry: Option<DeviceEntry>,
}

fn hex4(s: &str) -> Option<u16> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    (s.len() == 4 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| u16::from_str_radix(s, 16).ok())
        .flatten()
}

impl DeviceName {
    /// `00_14.0`, `dom0:00_14.0`, `0000:00:14.0`, `00:14.0`, `8086:8cb1`,
    /// `0x8086:0x8cb1`.
    pub fn parse(untrusted: &str) -> Result<DeviceName, DecodeError> {
        let s = untrusted.strip_prefix("dom0:").unwrap_or(untrusted);
        if let Ok(p) = PciPath::parse(s) {
            return Ok(DeviceName::Port(p));
        }
        if untrusted.starts_with("dom0:") {
            if let Some((port, id)) = s.split_once(':') {
                if let Ok(p) = PciPath::parse(port) {
                    if id.starts_with("0x") && id.is_ascii() && !id.contains(['+', ' ', '/']) {
                        return Ok(DeviceName::PortAndId(p, id.to_owned()));
                    }
                }
            }
        }
        if s.contains('.') {
            return Sbdf::parse(&s.to_ascii_lowercase()).map(DeviceName::Address);
        }
        if let Some((v, d)) = s.split_once(':') {
            if let (Some(vendor), Some(device)) = (hex4(v), hex4(d)) {
                return Ok(DeviceName::Ids { vendor, device });
            }
        }
        Err(DecodeError::InvalidPortId(format!(
            "{untrusted} (name a device by port id such as 00_14.0, address such as 0000:00:14.0, or vendor:device such as 8086:8cb1)"
        )))
    }

    /// The port and current device id of the named device, from `list`
    /// (dom0's `Available`). A port with no device there stays a port (an
    /// assignment of a device that is gone can still be removed); an
    /// address or id nobody has is DeviceNotFound, as dom0 would say.
    pub fn resolve(self, list: impl FnOnce() -> Result<Vec<DeviceEntry>, Failure>) -> Result<Resolved, Failure> {
        let devices = list()?;
        let found = |one: &DeviceEntry| -> Result<Resolved, Failure> {
            Ok(Resolved {
                port: PciPath::parse(&one.port).map_err(|e| Failure::Local(e.to_string()))?,
                device_id: Some(one.device_id.clone()),
                entry: Some(one.clone()),
            })
        };
        let pick = |what: String, f: &dyn Fn(&DeviceEntry) -> bool| -> Result<Resolved, Failure> {
            let hits: Vec<&DeviceEntry> = devices.iter().filter(|d| f(d)).collect();
            match hits.as_slice() {
                [one] => found(one),
                [] => Err(Failure::refused(
                    ExceptionKind::DeviceNotFound,
                    format!("dom0 has no device {what}: qubes-pci list shows the devices"),
                    Some(what),
                )),
                many => Err(Failure::refused(
                    ExceptionKind::QubesValueError,
                    format!(
                        "{} devices match {what}: {}; name one by its port id",
                        many.len(),
                        many.iter()
                            .map(|d| format!("dom0:{}", d.port))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Some(what),
                )),
            }
        };
        match self {
            DeviceName::Port(port) => {
                let p = port.to_string();
                match devices.iter().find(|d| d.port == p) {
                    Some(one) => found(one),
                    None => Ok(Resolved {
                        port,
                        device_id: None,
                        entry: None,
                    }),
                }
            }
            DeviceName::PortAndId(port, id) => Ok(Resolved {
                entry: devices.iter().find(|d| d.port == port.to_string()).cloned(),
                port,
                device_id: Some(id),
            }),
            DeviceName::Address(sbdf) => {
                let want = sbdf.to_string();
                pick(want.clone(), &|d| d.data.iter().any(|(k, v)| k == "sbdf" && *v == want))
            }
            DeviceName::Ids { vendor, device } => {
                let prefix = format!("0x{vendor:04x}:0x{device:04x}:");
                pick(format!("{vendor:04x}:{device:04x}"), &|d| {
                    d.device_id.starts_with(&prefix)
                })
            }
        }
    }
}

impl Resolved {
    /// `dom0+PORT[+DEVICE_ID]` in qrexec-argument form.
    pub fn qarg(&self) -> String {
        match &self.device_id {
            Some(id) => format!("dom0+{}+{}", self.port, id.replace(':', "+").replace(['*', '?'], "_")),
            None => self.port_qarg(),
        }
    }

    /// `dom0+PORT`: the stored assignment at that port, whatever its id.
    pub fn port_qarg(&self) -> String {
        format!("dom0+{}", self.port)
    }

    pub fn display(&self) -> String {
        format!("dom0:{}", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(matches!(DeviceName::parse("00_14.0"), Ok(DeviceName::Port(_))));
        assert!(matches!(
            DeviceName::parse("dom0:00_1c.0-00_00.0"),
            Ok(DeviceName::Port(_))
        ));
        assert_eq!(
            DeviceName::parse("0000:00:14.0").unwrap(),
            DeviceName::Address(Sbdf::parse("0000:00:14.0").unwrap())
        );
        assert!(matches!(DeviceName::parse("00:14.0"), Ok(DeviceName::Address(_))));
        assert_eq!(
            DeviceName::parse("0x8086:0x8CB1").unwrap(),
            DeviceName::Ids {
                vendor: 0x8086,
                device: 0x8cb1
            }
        );
        for bad in ["", "14.0", "8086:8cb", "../x", "dom0:", "0000:00:20.0"] {
            assert!(DeviceName::parse(bad).is_err(), "{bad}");
        }
    }
}
