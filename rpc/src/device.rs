//! Devices as the API names them: a port (backend qube + PCI path) and a
//! device id, either of which may be the wildcard `*`.

use std::fmt;

use crate::ident::{DeviceId, PciPath, QubeName};
use crate::props;
use crate::DecodeError;

/// The device class this service speaks for.
pub const DEVCLASS: &str = "pci";

/// `*` or a value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Wild<T> {
    Any,
    Is(T),
}

impl<T: fmt::Display> fmt::Display for Wild<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wild::Any => f.write_str("*"),
            Wild::Is(v) => v.fmt(f),
        }
    }
}

impl<T> Wild<T> {
    pub fn as_option(&self) -> Option<&T> {
        match self {
            Wild::Any => None,
            Wild::Is(v) => Some(v),
        }
    }

    /// True when either side is `*` or both are equal.
    pub fn matches(&self, other: &T) -> bool
    where
        T: PartialEq,
    {
        match self {
            Wild::Any => true,
            Wild::Is(v) => v == other,
        }
    }
}

/// A device reference: backend qube, port and device id
/// (upstream's `VirtualDevice`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeviceRef {
    pub backend: QubeName,
    pub port: Wild<PciPath>,
    pub device_id: Wild<DeviceId>,
}

impl DeviceRef {
    /// Parses the qrexec-argument form: `dom0+00_14.0+0x8086+0x8cb1++p0c0330`,
    /// `dom0+00_14.0+_` or `dom0+00_14.0`. A wildcard backend is refused:
    /// every PCI device belongs to dom0's inventory.
    ///
    /// Only qrexec's argument characters are taken (`*`, `?` and `:` never
    /// appear in the encoded form), so [`DeviceRef::to_qarg`] of the result
    /// decodes to the same value.
    pub fn from_qarg(untrusted: &str) -> Result<DeviceRef, DecodeError> {
        let bad = || DecodeError::InvalidDeviceArg(untrusted.to_owned());
        if !untrusted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
        {
            return Err(bad());
        }
        let (backend, ident) = untrusted.split_once('+').ok_or_else(bad)?;
        let backend = QubeName::parse(backend)?;
        let ident = ident.replace('+', ":");
        let (port, devid) = match ident.split_once(':') {
            Some((p, d)) => (p.to_owned(), d.to_owned()),
            None => (ident, String::new()),
        };
        let port = match port.as_str() {
            "_" => Wild::Any,
            p => Wild::Is(PciPath::parse(p)?),
        };
        let device_id = match devid.as_str() {
            "" | "_" => Wild::Any,
            d => Wild::Is(DeviceId::parse(&qarg_devid_unmangle(d))?),
        };
        Ok(DeviceRef {
            backend,
            port,
            device_id,
        })
    }

    /// The qrexec-argument form (`:` → `+`, `*` and `?` → `_`): the one
    /// canonical spelling of the value.
    pub fn to_qarg(&self) -> String {
        format!("{}+{}:{}", self.backend, self.port, self.device_id)
            .replace(':', "+")
            .replace(['*', '?'], "_")
    }

    /// `backend+port_id:device_id`, the key of Assigned/Attached lines.
    pub fn list_key(&self) -> String {
        format!("{}+{}:{}", self.backend, self.port, self.device_id)
    }

    /// True when `self`, with its wildcards, covers the concrete device.
    pub fn matches(&self, backend: &QubeName, port: &PciPath, device_id: &DeviceId) -> bool {
        &self.backend == backend && self.port.matches(port) && self.device_id.matches(device_id)
    }

    /// Appends the `device_id port_id devclass backend_domain` properties.
    pub fn pack_into(&self, out: &mut String) -> Result<(), DecodeError> {
        props::pack(out, "device_id", &self.device_id.to_string())?;
        props::pack(out, "port_id", &self.port.to_string())?;
        props::pack(out, "devclass", DEVCLASS)?;
        props::pack(out, "backend_domain", self.backend.as_str())
    }
}

impl fmt::Display for DeviceRef {
    /// `backend:port_id:device_id`, as upstream's messages name a device.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.backend, self.port, self.device_id)
    }
}

/// In the qrexec argument every `*` and `?` became `_`. Inside the interface
/// codes `_` can only be such a mangled character: the first of a code was
/// `?` (unknown class, upstream's `_______` for `?******`), the others `*`.
fn qarg_devid_unmangle(d: &str) -> String {
    let Some((head, ifaces)) = d.rsplit_once(':') else {
        return d.to_owned();
    };
    let ifaces: String = ifaces
        .chars()
        .enumerate()
        .map(|(i, c)| match (c, i % 7) {
            ('_', 0) => '?',
            ('_', _) => '*',
            (c, _) => c,
        })
        .collect();
    format!("{head}:{ifaces}")
}

/// A device as `Available` lists it (upstream's `DeviceInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub backend: QubeName,
    pub port: PciPath,
    pub device_id: DeviceId,
    /// Vendor name, `None` when unknown.
    pub vendor: Option<String>,
    /// Product name, `None` when unknown.
    pub product: Option<String>,
    /// Extra data, serialized as `_key='value'` in this order.
    pub data: Vec<(String, String)>,
}

impl DeviceInfo {
    /// The key of an `Available` line: `port_id:device_id`.
    pub fn list_key(&self) -> String {
        format!("{}:{}", self.port, self.device_id)
    }

    /// The property list of an `Available` line.
    pub fn serialize(&self) -> Result<String, DecodeError> {
        let mut out = String::new();
        let r = DeviceRef {
            backend: self.backend.clone(),
            port: Wild::Is(self.port.clone()),
            device_id: Wild::Is(self.device_id.clone()),
        };
        r.pack_into(&mut out)?;
        if let Some(v) = &self.vendor {
            props::pack(&mut out, "vendor", &sanitize_value(v))?;
        }
        if let Some(p) = &self.product {
            props::pack(&mut out, "product", &sanitize_value(p))?;
        }
        let ifaces: String = self.device_id.interfaces.iter().map(|i| i.as_str()).collect();
        props::pack(&mut out, "interfaces", &ifaces)?;
        for (k, v) in &self.data {
            props::pack(&mut out, &format!("_{k}"), &sanitize_value(v))?;
        }
        Ok(out)
    }

    /// The whole `Available` line, newline included.
    pub fn to_line(&self) -> Result<String, DecodeError> {
        Ok(format!("{} {}\n", self.list_key(), self.serialize()?))
    }
}

/// Names from pci.ids may hold non-ASCII characters, which the wire format
/// cannot carry, or end in `=`, which it cannot parse back: replace them.
pub fn sanitize_value(v: &str) -> String {
    let mut s: String = v
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if s.ends_with('=') {
        s.pop();
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::Interface;
    use proptest::prelude::*;

    #[test]
    fn qarg_examples() {
        let d = DeviceRef::from_qarg("dom0+00_14.0+0x8086+0x8cb1++p0c0330").unwrap();
        assert_eq!(d.to_string(), "dom0:00_14.0:0x8086:0x8cb1::p0c0330");
        assert_eq!(d.to_qarg(), "dom0+00_14.0+0x8086+0x8cb1++p0c0330");
        let w = DeviceRef::from_qarg("dom0+00_14.0+_").unwrap();
        assert_eq!(w.device_id, Wild::Any);
        assert_eq!(w.to_qarg(), "dom0+00_14.0+_");
        assert_eq!(DeviceRef::from_qarg("dom0+00_14.0").unwrap(), w);
        let u = DeviceRef::from_qarg("dom0+00_14.0+0000+0000++_______").unwrap();
        assert_eq!(u.device_id.to_string(), "0000:0000::?******");
        assert_eq!(u.to_qarg(), "dom0+00_14.0+0000+0000++_______");
        let p = DeviceRef::from_qarg("dom0+_+0x8086+0x8cb1++p0c03__").unwrap();
        assert_eq!(p.port, Wild::Any);
        assert_eq!(p.device_id.to_string(), "0x8086:0x8cb1::p0c03**");
        let path = DeviceRef::from_qarg("dom0+0000_c0_03.7-00_00.0-00_00.0+0x8086+0x8cb1++p0c0330").unwrap();
        assert_eq!(path.port.to_string(), "c0_03.7-00_00.0-00_00.0");
    }

    #[test]
    fn qarg_rejects() {
        for a in [
            "",
            "dom0",
            "+00_14.0",
            "_+00_14.0",
            "dom0+00_14",
            "dom0+..+_",
            "dom0+00_14.0+0x8086",
            "dom0+00_14.0+0x8086+0x8cb1++p0c033",
        ] {
            assert!(DeviceRef::from_qarg(a).is_err(), "{a:?}");
        }
    }

    #[test]
    fn available_line() {
        let info = DeviceInfo {
            backend: QubeName::dom0(),
            port: PciPath::parse("00_14.0").unwrap(),
            device_id: DeviceId::pci(0x8086, 0x8cb1, Some(0x0c0330)),
            vendor: Some("Intel Corporation".into()),
            product: Some("9 Series Chipset Family USB xHCI Controller".into()),
            data: vec![("sbdf".into(), "0000:00:14.0".into())],
        };
        assert_eq!(
            info.to_line().unwrap(),
            "00_14.0:0x8086:0x8cb1::p0c0330 device_id='0x8086:0x8cb1::p0c0330' port_id='00_14.0' devclass='pci' backend_domain='dom0' vendor='Intel Corporation' product='9 Series Chipset Family USB xHCI Controller' interfaces='p0c0330' _sbdf='0000:00:14.0'\n"
        );
    }

    fn path() -> impl Strategy<Value = PciPath> {
        (
            any::<u16>(),
            proptest::collection::vec((any::<u8>(), 0u8..0x20, 0u8..8), 1..4),
        )
            .prop_map(|(s, h)| {
                PciPath::new(
                    s,
                    h.into_iter()
                        .map(|(bus, device, function)| crate::ident::PathHop { bus, device, function })
                        .collect(),
                )
                .unwrap()
            })
    }

    fn devid() -> impl Strategy<Value = DeviceId> {
        (any::<u16>(), any::<u16>(), proptest::option::of(0u32..0x100_0000))
            .prop_map(|(v, d, c)| DeviceId::pci(v, d, c))
    }

    /// Review finding: `a+15_14.0+:::p0_0` + 41 `*` + `c__6` decoded to
    /// interfaces starting `?******`, whose encoding decoded to `*******`.
    #[test]
    fn the_reported_spelling_is_refused_and_wildcards_round_trip() {
        let reported = format!("a+15_14.0+:::p0_0{}c__6", "*".repeat(41));
        assert!(
            DeviceRef::from_qarg(&reported).is_err(),
            "`:` and `*` are not qrexec argument characters"
        );
        assert!(Interface::parse("*******").is_err(), "`*` never stands first");
        for q in [
            "dom0+00_14.0+0x8086+0x8cb1++_______",
            "dom0+00_14.0+0x8086+0x8cb1++p______",
            "dom0+00_14.0+_",
        ] {
            let v = DeviceRef::from_qarg(q).unwrap();
            assert_eq!(v.to_qarg(), q);
        }
        assert_eq!(
            DeviceRef::from_qarg("dom0+00_14.0+0x8086+0x8cb1++_______")
                .unwrap()
                .device_id
                .to_string(),
            "0x8086:0x8cb1::?******"
        );
        // Other spellings of one value have one canonical form.
        for q in ["dom0+00_14.0", "dom0+0000_00_14.0", "dom0+0000_00_14.0+_"] {
            assert_eq!(DeviceRef::from_qarg(q).unwrap().to_qarg(), "dom0+00_14.0+_");
        }
    }

    proptest! {
        #[test]
        fn qarg_roundtrip(p in proptest::option::of(path()), d in proptest::option::of(devid())) {
            let r = DeviceRef {
                backend: QubeName::dom0(),
                port: p.map_or(Wild::Any, Wild::Is),
                device_id: d.map_or(Wild::Any, Wild::Is),
            };
            prop_assert_eq!(DeviceRef::from_qarg(&r.to_qarg()).unwrap(), r);
        }

        #[test]
        fn path_roundtrip(p in path()) {
            prop_assert_eq!(PciPath::parse(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn info_serialization_parses_back(p in path(), d in devid(), vendor in "[ -~]{0,30}[ -<>-~]") {
            let info = DeviceInfo { backend: QubeName::dom0(), port: p.clone(), device_id: d.clone(), vendor: Some(vendor.clone()), product: None, data: vec![] };
            let props = props::unpack(info.serialize().unwrap().as_bytes()).unwrap();
            let (ps, ds) = (p.to_string(), d.to_string());
            prop_assert_eq!(props.get("port_id"), Some(ps.as_str()));
            prop_assert_eq!(props.get("device_id"), Some(ds.as_str()));
            prop_assert_eq!(props.get("vendor"), Some(vendor.as_str()));
            let ifaces: String = d.interfaces.iter().map(Interface::as_str).collect();
            prop_assert_eq!(props.get("interfaces"), Some(ifaces.as_str()));
        }

        #[test]
        fn qarg_never_panics(s in "[A-Za-z0-9_.+-]{0,60}") {
            let _ = DeviceRef::from_qarg(&s);
        }

        /// One value, one encoding: whatever a spelling decodes to, its
        /// canonical encoding decodes to the same value (and is a fixed point).
        #[test]
        fn any_accepted_spelling_reencodes_to_the_same_value(
            s in "dom0\\+(_|(0000_)?[0-9a-f]{2}_[01][0-9a-f]\\.[0-7])(\\+[0-9a-fx_.-]{0,8}\\+[0-9a-fx_.-]{0,8}\\+[a-z0-9_]{0,4}\\+[pub?m_*0-9a-f]{0,21})?(\\+_)?"
        ) {
            if let Ok(v) = DeviceRef::from_qarg(&s) {
                let c = v.to_qarg();
                prop_assert_eq!(DeviceRef::from_qarg(&c).unwrap(), v.clone(), "{} -> {}", s, c);
                prop_assert_eq!(DeviceRef::from_qarg(&c).unwrap().to_qarg(), c);
            }
        }
    }
}
