//! Requests in both qrexec forms: the socket-service framing
//! (`METHOD+ARG SOURCE name|keyword DEST` + NUL + payload) and the
//! exec-service form (`QREXEC_*` environment, argv, payload on stdin).

use std::fmt;

use crate::ident::{QubeName, QubeRef};
use crate::method::Method;
use crate::DecodeError;

/// The largest request (header, NUL and payload) accepted, as qubesd.
pub const MAX_REQUEST: usize = 65536;

/// The longest `service+argument` qrexec passes.
pub const MAX_SERVICE_ARG: usize = 65000;

/// The destination as qrexec passed it, not yet validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UntrustedTarget {
    /// `name X`
    Name(String),
    /// `keyword X` (the `@` stripped), `adminvm` for dom0.
    Keyword(String),
}

/// A request as read from the caller: every field untrusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UntrustedRequest {
    pub untrusted_method: String,
    pub untrusted_arg: String,
    pub untrusted_source: String,
    pub untrusted_target: UntrustedTarget,
    pub untrusted_payload: Vec<u8>,
}

/// A validated destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `@adminvm`, i.e. dom0.
    AdminVm,
    Qube(QubeRef),
}

impl Target {
    pub fn is_dom0(&self) -> bool {
        match self {
            Target::AdminVm => true,
            Target::Qube(QubeRef::Name(n)) => n.is_dom0(),
            Target::Qube(QubeRef::Uuid(u)) => u == "00000000-0000-0000-0000-000000000000",
        }
    }
}

impl fmt::Display for Target {
    /// The spelling the policy sees: `@adminvm`, a name or `uuid:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AdminVm => f.write_str("@adminvm"),
            Target::Qube(q) => q.fmt(f),
        }
    }
}

/// A request whose method, argument charset, source and destination have
/// been validated. The argument's meaning and the payload are checked by
/// each method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub untrusted_arg: String,
    pub source: QubeName,
    pub target: Target,
    pub untrusted_payload: Vec<u8>,
}

fn split_method_arg(meth_arg: &str) -> (String, String) {
    match meth_arg.split_once('+') {
        Some((m, a)) => (m.to_owned(), a.to_owned()),
        None => (meth_arg.to_owned(), String::new()),
    }
}

/// The qrexec variables the exec-service form is read from.
pub const QREXEC_VARS: [&str; 6] = [
    "QREXEC_REMOTE_DOMAIN",
    "QREXEC_SERVICE_ARGUMENT",
    "QREXEC_SERVICE_FULL_NAME",
    "QREXEC_REQUESTED_TARGET",
    "QREXEC_REQUESTED_TARGET_TYPE",
    "QREXEC_REQUESTED_TARGET_KEYWORD",
];

impl UntrustedRequest {
    /// Decodes the socket-service framing. `untrusted_buf` is everything the
    /// caller sent; the reader must stop after `MAX_REQUEST + 1` bytes.
    pub fn decode_socket(untrusted_buf: &[u8]) -> Result<UntrustedRequest, DecodeError> {
        if untrusted_buf.len() > MAX_REQUEST {
            return Err(DecodeError::TooLong);
        }
        let nul = untrusted_buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Framing("header is not terminated by NUL"))?;
        let (header, rest) = untrusted_buf.split_at(nul);
        let payload = rest.get(1..).unwrap_or_default().to_vec();
        let header = std::str::from_utf8(header)
            .ok()
            .filter(|h| h.is_ascii())
            .ok_or(DecodeError::Framing("header is not ASCII"))?;
        let mut fields = header.splitn(4, ' ');
        let (Some(meth_arg), Some(source), Some(dest_type), Some(dest)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(DecodeError::Framing("header has fewer than four fields"));
        };
        let target = match dest_type {
            "name" => UntrustedTarget::Name(dest.to_owned()),
            "keyword" => UntrustedTarget::Keyword(dest.to_owned()),
            _ => return Err(DecodeError::Framing("destination type is neither name nor keyword")),
        };
        let (method, arg) = split_method_arg(meth_arg);
        Ok(UntrustedRequest {
            untrusted_method: method,
            untrusted_arg: arg,
            untrusted_source: source.to_owned(),
            untrusted_target: target,
            untrusted_payload: payload,
        })
    }

    /// Encodes the socket-service framing (for clients and tests).
    pub fn encode_socket(&self) -> Vec<u8> {
        let (ty, dest) = match &self.untrusted_target {
            UntrustedTarget::Name(n) => ("name", n),
            UntrustedTarget::Keyword(k) => ("keyword", k),
        };
        let mut out = format!(
            "{}+{} {} {} {}\0",
            self.untrusted_method, self.untrusted_arg, self.untrusted_source, ty, dest
        )
        .into_bytes();
        out.extend_from_slice(&self.untrusted_payload);
        out
    }

    /// Decodes the exec-service form (from the variables of
    /// [`QREXEC_VARS`]). `argv0` is the program name (its base
    /// name is the method when qrexec runs `/etc/qubes-rpc/<method>`), `argv1`
    /// the first argument, `env` looks up the environment.
    pub fn decode_exec(
        argv0: &str,
        argv1: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        untrusted_payload: Vec<u8>,
    ) -> Result<UntrustedRequest, DecodeError> {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        let (mut method, mut arg) = split_method_arg(base);
        if !method.starts_with("admin.") {
            let full = env("QREXEC_SERVICE_FULL_NAME").ok_or(DecodeError::MissingEnv("QREXEC_SERVICE_FULL_NAME"))?;
            (method, arg) = split_method_arg(&full);
        }
        if let Some(a) = env("QREXEC_SERVICE_ARGUMENT") {
            arg = a;
        } else if let Some(a) = argv1 {
            arg = a.to_owned();
        }
        let source = env("QREXEC_REMOTE_DOMAIN").ok_or(DecodeError::MissingEnv("QREXEC_REMOTE_DOMAIN"))?;
        let target_type = env("QREXEC_REQUESTED_TARGET_TYPE").unwrap_or_default();
        let target = if target_type == "keyword" {
            UntrustedTarget::Keyword(
                env("QREXEC_REQUESTED_TARGET_KEYWORD")
                    .ok_or(DecodeError::MissingEnv("QREXEC_REQUESTED_TARGET_KEYWORD"))?,
            )
        } else {
            // `name`, or unset as when dom0's qubesadmin runs the service itself.
            UntrustedTarget::Name(
                env("QREXEC_REQUESTED_TARGET").ok_or(DecodeError::MissingEnv("QREXEC_REQUESTED_TARGET"))?,
            )
        };
        Ok(UntrustedRequest {
            untrusted_method: method,
            untrusted_arg: arg,
            untrusted_source: source,
            untrusted_target: target,
            untrusted_payload,
        })
    }

    /// Validates method, argument charset, source and destination.
    pub fn validate(self) -> Result<Request, DecodeError> {
        let method = Method::parse(&self.untrusted_method)?;
        let arg_ok = self.untrusted_arg.len() <= MAX_SERVICE_ARG
            && self
                .untrusted_arg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
        if !arg_ok {
            return Err(DecodeError::InvalidArgChars);
        }
        let source = QubeName::parse(&self.untrusted_source)?;
        let target = match &self.untrusted_target {
            UntrustedTarget::Keyword(k) if k == "adminvm" => Target::AdminVm,
            UntrustedTarget::Keyword(k) => {
                return Err(DecodeError::InvalidTargetKeyword(crate::device::sanitize_value(k)))
            }
            UntrustedTarget::Name(n) => Target::Qube(QubeRef::parse(n)?),
        };
        Ok(Request {
            method,
            untrusted_arg: self.untrusted_arg,
            source,
            target,
            untrusted_payload: self.untrusted_payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn socket_header() {
        let r = UntrustedRequest::decode_socket(b"admin.vm.device.pci.Available+ mgmt keyword adminvm\0").unwrap();
        assert_eq!(r.untrusted_method, "admin.vm.device.pci.Available");
        assert_eq!(r.untrusted_arg, "");
        assert_eq!(r.untrusted_target, UntrustedTarget::Keyword("adminvm".into()));
        let v = r.validate().unwrap();
        assert_eq!(v.target, Target::AdminVm);
        assert!(v.target.is_dom0());

        let r = UntrustedRequest::decode_socket(
            b"admin.vm.device.pci.Assign+dom0+00_14.0+_ mgmt name work\0mode='required'\0x",
        )
        .unwrap();
        assert_eq!(r.untrusted_arg, "dom0+00_14.0+_");
        assert_eq!(r.untrusted_payload, b"mode='required'\0x");
        assert_eq!(UntrustedRequest::decode_socket(&r.encode_socket()).unwrap(), r);
    }

    #[test]
    fn socket_framing_errors() {
        for bad in [
            &b"admin.vm.device.pci.Available+ dom0 name dom0"[..],
            b"admin.vm.device.pci.Available+ dom0 name\0",
            b"admin.vm.device.pci.Available+ dom0 other dom0\0",
            b"admin.vm.device.pci.Available+ dom\xff0 name dom0\0",
        ] {
            assert!(matches!(
                UntrustedRequest::decode_socket(bad),
                Err(DecodeError::Framing(_))
            ));
        }
        let big = vec![b'a'; MAX_REQUEST + 1];
        assert_eq!(UntrustedRequest::decode_socket(&big), Err(DecodeError::TooLong));
    }

    #[test]
    fn validation_errors() {
        let ok = UntrustedRequest::decode_socket(b"admin.vm.device.pci.Available+ dom0 name dom0\0").unwrap();
        let mut r = ok.clone();
        r.untrusted_method = "admin.vm.device.pci.List".into();
        assert!(matches!(r.validate(), Err(DecodeError::UnknownMethod(_))));
        let mut r = ok.clone();
        r.untrusted_arg = "00_14.0/../x".into();
        assert_eq!(r.validate(), Err(DecodeError::InvalidArgChars));
        let mut r = ok.clone();
        r.untrusted_target = UntrustedTarget::Keyword("dispvm".into());
        assert!(r.validate().is_err());
        let mut r = ok;
        r.untrusted_source = "-bad".into();
        assert!(r.validate().is_err());
    }

    #[test]
    fn exec_env() {
        let env: HashMap<&str, &str> = [
            ("QREXEC_REMOTE_DOMAIN", "mgmt"),
            ("QREXEC_REQUESTED_TARGET_TYPE", "name"),
            ("QREXEC_REQUESTED_TARGET", "work"),
            ("QREXEC_SERVICE_ARGUMENT", "dom0+00_14.0"),
        ]
        .into_iter()
        .collect();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let r = UntrustedRequest::decode_exec(
            "/etc/qubes-rpc/admin.vm.device.pci.Unassign",
            Some("dom0+00_14.0"),
            get,
            vec![],
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(r.method, Method::Unassign);
        assert_eq!(r.untrusted_arg, "dom0+00_14.0");
        assert_eq!(r.target.to_string(), "work");

        let env2: HashMap<&str, &str> = [
            ("QREXEC_REMOTE_DOMAIN", "gui"),
            ("QREXEC_REQUESTED_TARGET_TYPE", "keyword"),
            ("QREXEC_REQUESTED_TARGET_KEYWORD", "adminvm"),
        ]
        .into_iter()
        .collect();
        let get2 = |k: &str| env2.get(k).map(|v| v.to_string());
        let r = UntrustedRequest::decode_exec("admin.vm.device.pci.Available", None, get2, vec![]).unwrap();
        assert_eq!(r.untrusted_target, UntrustedTarget::Keyword("adminvm".into()));
        let missing = UntrustedRequest::decode_exec("admin.vm.device.pci.Available", None, |_| None, vec![]);
        assert_eq!(missing, Err(DecodeError::MissingEnv("QREXEC_REMOTE_DOMAIN")));
    }

    proptest! {
        #[test]
        fn socket_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(r) = UntrustedRequest::decode_socket(&bytes) {
                let _ = r.validate();
            }
        }

        #[test]
        fn socket_roundtrip(method in "[A-Za-z.]{1,30}", arg in "[A-Za-z0-9_.+-]{0,30}", src in "[a-z][a-z0-9-]{0,20}", dest in "[a-z][a-z0-9-]{0,20}", payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let r = UntrustedRequest { untrusted_method: method, untrusted_arg: arg, untrusted_source: src, untrusted_target: UntrustedTarget::Name(dest), untrusted_payload: payload };
            prop_assert_eq!(UntrustedRequest::decode_socket(&r.encode_socket()).unwrap(), r);
        }
    }
}
