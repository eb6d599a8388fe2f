//! The request path shared by exec mode, `call` and the daemon: validate,
//! check policy, resolve the qubes, apply the method's generic rules,
//! dispatch.

mod assign;
mod attach;
mod available;
pub mod defaults;
pub mod diagnose;
mod facts;
mod listing;
mod sources;

use std::time::Instant;

use qubes_pci_rpc::method::Want;
use std::sync::Arc;

use qubes_pci_rpc::device::sanitize_value;
use qubes_pci_rpc::native::{self, Answer, AssignmentEntry, DeviceEntry, NativeError, NativeReply, NativeRequest};
use qubes_pci_rpc::{
    Assignment, DecodeError, DeviceInfo, DeviceRef, Method, PciPath, QubeName, Reply, Request, UntrustedRequest,
    UntrustedTarget, Wild,
};

pub use assign::find_for_arg;
pub use available::{describe, device_infos};
pub use sources::Sources;

use crate::cache::Uevents;
use crate::error::ApiError;
use crate::pci::Inventory;
use crate::qubesd as qubesd_wire;
use crate::sysinfo::{DomainInfo, SystemInfo};
use crate::Config;
use qubes_pci_rpc::Target;

/// The service: where the facts come from ([`Sources`]), and how calls
/// are answered.
#[derive(Clone)]
pub struct Service {
    pub sources: Sources,
}

/// What a method answers, before it is encoded for a protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Empty,
    Devices(Vec<DeviceInfo>),
    /// A device listing already rendered (the daemon keeps the whole
    /// `Available` answer while the devices and names it came from are
    /// the ones it keeps).
    Rendered(Arc<Rendered>),
    Assignments(Vec<Assignment>),
}

/// Devices and their text body, rendered once.
#[derive(Debug, PartialEq, Eq)]
pub struct Rendered {
    pub devices: Vec<DeviceInfo>,
    pub text: Vec<u8>,
}

impl Rendered {
    pub fn new(devices: Vec<DeviceInfo>) -> Result<Rendered, ApiError> {
        let text = sorted_lines(devices.iter().map(DeviceInfo::to_line))?;
        Ok(Rendered { devices, text })
    }
}

impl Output {
    /// The text body: one line each, sorted.
    pub fn to_text(&self) -> Result<Vec<u8>, ApiError> {
        match self {
            Output::Empty => Ok(Vec::new()),
            Output::Devices(d) => sorted_lines(d.iter().map(DeviceInfo::to_line)),
            Output::Rendered(r) => Ok(r.text.clone()),
            Output::Assignments(a) => sorted_lines(a.iter().map(Assignment::to_line)),
        }
    }

    /// The native answer, in the same order as the text lines.
    pub fn to_answer(&self) -> Answer {
        match self {
            Output::Empty => Answer::Done,
            Output::Devices(d) => devices_answer(d),
            Output::Rendered(r) => devices_answer(&r.devices),
            Output::Assignments(a) => {
                let mut a: Vec<&Assignment> = a.iter().collect();
                a.sort_by_cached_key(|i| i.to_line().unwrap_or_default());
                Answer::Assignments(a.into_iter().map(AssignmentEntry::from).collect())
            }
        }
    }
}

/// The native answer listing devices, in the text lines' order.
fn devices_answer(d: &[DeviceInfo]) -> Answer {
    let mut d: Vec<&DeviceInfo> = d.iter().collect();
    d.sort_by_cached_key(|i| i.list_key());
    Answer::Devices(d.into_iter().map(DeviceEntry::from).collect())
}

/// The text body: the lines, sorted.
fn sorted_lines<E>(lines: impl Iterator<Item = Result<String, E>>) -> Result<Vec<u8>, ApiError>
where
    ApiError: From<E>,
{
    let mut lines: Vec<String> = lines.collect::<Result<_, _>>()?;
    lines.sort();
    Ok(lines.concat().into_bytes())
}

/// The protocol a call spoke, known from its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Text,
    Native,
}

/// The encoded reply and whether it reports success.
pub struct Response {
    pub bytes: Vec<u8>,
    pub ok: bool,
}

/// A method's argument, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    None,
    /// `Available`'s filter: a bare port id.
    Port(PciPath),
    /// Every other method: `backend+port_id[+device_id]`.
    Device(DeviceRef),
}

impl Arg {
    fn parse(method: Method, untrusted: &str) -> Result<Arg, ApiError> {
        Ok(match (method, untrusted) {
            (_, "") => Arg::None,
            (Method::Available, p) => Arg::Port(PciPath::parse(p)?),
            (_, d) => Arg::Device(DeviceRef::from_qarg(d)?),
        })
    }
}

/// A call that passed validation and policy, with its destination resolved.
pub struct Call {
    pub req: Request,
    pub arg: Arg,
    pub system: Arc<SystemInfo>,
    /// The destination, by its name in the system info.
    pub dest: QubeName,
}

impl Call {
    pub fn dest_info(&self) -> Option<&DomainInfo> {
        self.system.domains.get(self.dest.as_str())
    }

    /// The device argument of a method that acts on one device. PCI devices
    /// belong to dom0: another backend, or no port, names no device.
    pub fn device_arg(&self) -> Result<DeviceRef, ApiError> {
        let Arg::Device(d) = &self.arg else {
            return Err(ApiError::Protocol(format!("{}: expected an argument", self.req.method)));
        };
        if !d.backend.is_dom0() {
            return Err(ApiError::DeviceNotFound(format!(
                "PCI devices belong to dom0, not {}: name the device as dom0+PORT (qvm-pci lists them)",
                d.backend
            )));
        }
        if d.port == Wild::Any {
            return Err(ApiError::DeviceNotFound(format!(
                "{}: name the device by its port id, such as dom0+00_14.0 (qvm-pci lists them)",
                self.req.method
            )));
        }
        Ok(d.clone())
    }
}

impl Service {
    /// A service for one call (exec mode, the CLI): reads everything anew.
    pub fn new(config: Config) -> Service {
        Service {
            sources: Sources::new(config),
        }
    }

    /// A service for the daemon: keeps what it read until it changes (see
    /// [`Sources::resident`]).
    pub fn resident(config: Config, uevents: Option<Uevents>) -> Service {
        Service {
            sources: Sources::resident(config, uevents),
        }
    }

    /// One change sent to qubesd's Admin API as dom0; its refusal keeps
    /// its exception name. When qubesd had the whole request and gave no
    /// answer, the change may or may not have been made: [`ApiError::Unanswered`].
    pub fn forward(&self, method: Method, arg: &str, dest: &QubeName, payload: &[u8]) -> Result<Output, ApiError> {
        tracing::debug!(%method, arg, %dest, "to qubesd");
        let answer = self
            .sources
            .qubesd()
            .admin(&method.to_string(), arg, dest, payload)
            .map_err(|e| {
                if e.was_sent() {
                    ApiError::unanswered(&e)
                } else {
                    e.into()
                }
            })?;
        match answer {
            qubesd_wire::Answer::Ok(_) => Ok(Output::Empty),
            qubesd_wire::Answer::Refused { name, message } => Err(ApiError::Relayed { name, message }),
        }
    }

    /// Answers one request in the text protocol. Never panics on input;
    /// every failure is a typed error reply.
    pub fn handle(&self, untrusted: Result<UntrustedRequest, DecodeError>) -> Reply {
        let (result, _) = self.run(untrusted, Protocol::Text);
        match result.and_then(|o| o.to_text()) {
            Ok(body) => Reply::Ok(body),
            Err(e) => e.to_reply(),
        }
    }

    /// Answers one request in the protocol its payload speaks: a native
    /// frame gets a native reply, anything else the text reply.
    pub fn respond(&self, untrusted: Result<UntrustedRequest, DecodeError>) -> Response {
        let native = untrusted
            .as_ref()
            .is_ok_and(|u| native::is_native(&u.untrusted_payload));
        if !native {
            let reply = self.handle(untrusted);
            return Response {
                ok: reply.code() == 0,
                bytes: reply.encode(),
            };
        }
        let (result, (device, qube)) = self.run(untrusted, Protocol::Native);
        let ok = result.is_ok();
        let reply = NativeReply {
            version: native::VERSION,
            result: result
                .map(|o| o.to_answer())
                .map_err(|e| NativeError::new(e.kind(), e.to_string(), device, qube)),
        };
        let bytes = native::encode(&reply).unwrap_or_else(|_| {
            Reply::error(
                qubes_pci_rpc::ExceptionKind::QubesException,
                "cannot encode the native reply",
            )
            .encode()
        });
        Response { bytes, ok }
    }

    /// [`Service::respond`], with a panic (a bug) turned into a typed
    /// reply: a caller always gets an answer.
    pub fn answer(&self, untrusted: Result<UntrustedRequest, DecodeError>) -> Response {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.respond(untrusted))).unwrap_or_else(|_| {
            Response {
                bytes: Reply::error(
                    qubes_pci_rpc::ExceptionKind::QubesException,
                    "internal error in qubes-pci-admin; see the dom0 journal",
                )
                .encode(),
                ok: false,
            }
        })
    }

    /// Runs a call and logs one line for it: method, source, target,
    /// argument, protocol, decision, duration (never the payload). Also
    /// returns the device and qube the call named, for structured errors.
    fn run(
        &self,
        untrusted: Result<UntrustedRequest, DecodeError>,
        protocol: Protocol,
    ) -> (Result<Output, ApiError>, (Option<String>, Option<String>)) {
        let start = Instant::now();
        let (method, source, target, arg) = match &untrusted {
            Ok(u) => (
                sanitize_value(&u.untrusted_method),
                sanitize_value(&u.untrusted_source),
                match &u.untrusted_target {
                    UntrustedTarget::Name(n) => sanitize_value(n),
                    UntrustedTarget::Keyword(k) => format!("@{}", sanitize_value(k)),
                },
                sanitize_value(&u.untrusted_arg),
            ),
            Err(_) => Default::default(),
        };
        // Only native replies carry them; text calls skip the parsing.
        let concerns = untrusted
            .as_ref()
            .ok()
            .filter(|_| protocol == Protocol::Native)
            .map_or((None, None), |u| {
                let device = DeviceRef::from_qarg(&u.untrusted_arg).ok().map(|d| d.to_string());
                let qube = match &u.untrusted_target {
                    UntrustedTarget::Name(n) => QubeName::parse(n).ok().map(|q| q.to_string()),
                    UntrustedTarget::Keyword(_) => Some(QubeName::dom0().to_string()),
                };
                (device, qube)
            });
        let result = untrusted
            .map_err(ApiError::from)
            .and_then(|u| self.dispatch(u, protocol));
        let micros = start.elapsed().as_micros() as u64;
        let proto = match protocol {
            Protocol::Text => "text",
            Protocol::Native => "native",
        };
        match &result {
            Ok(_) => tracing::info!(
                method,
                source,
                target,
                arg,
                protocol = proto,
                decision = "ok",
                duration_us = micros,
                "call"
            ),
            Err(e) => {
                let kind = e.kind().name();
                let error = qubes_pci_rpc::reply::escape_controls(&e.to_string());
                tracing::warn!(
                    method,
                    source,
                    target,
                    arg,
                    protocol = proto,
                    decision = kind,
                    duration_us = micros,
                    error,
                    "call"
                );
            }
        }
        (result, concerns)
    }

    fn dispatch(&self, untrusted: UntrustedRequest, protocol: Protocol) -> Result<Output, ApiError> {
        let mut req = untrusted.validate()?;
        let system = self.sources.system_info()?;
        if !req.source.is_dom0() {
            let spellings = self.spellings(&req, &system);
            crate::policy::check(|| self.sources.policy(), &system, &req, &spellings)?;
        }
        let dest = match &req.target {
            Target::AdminVm => QubeName::dom0(),
            Target::Qube(q) => match system.resolve(q) {
                Some((name, _)) => QubeName::parse(name).map_err(|_| ApiError::NoSuchQube(q.to_string()))?,
                None if req.target.is_dom0() => QubeName::dom0(),
                None => return Err(ApiError::NoSuchQube(q.to_string())),
            },
        };
        if protocol == Protocol::Native {
            // The typed request stands for the text payload it means; from
            // here on both protocols take the same path.
            let native = NativeRequest::decode(&req.untrusted_payload)?;
            req.untrusted_payload = native.to_text_payload()?;
        }
        check_generic(&req)?;
        let arg = Arg::parse(req.method, &req.untrusted_arg)?;
        let call = Call { req, arg, system, dest };
        match call.req.method {
            Method::Available => available::handle(self, &call),
            Method::Assigned => listing::assigned(self, &call),
            Method::Attached => listing::attached(self, &call),
            Method::Assign => assign::assign(self, &call),
            Method::Unassign => assign::unassign(self, &call),
            Method::SetAssignment => assign::set_mode(self, &call),
            Method::Attach => attach::attach(self, &call),
            Method::Detach => attach::detach(self, &call),
        }
    }
}

impl Service {
    /// The spellings of the device a call names, besides its own: the
    /// canonical one, the port alone, and the port with the id of the
    /// device present there and of what the destination has stored there.
    /// A deny rule on any of them holds for the call.
    fn spellings(&self, req: &Request, system: &SystemInfo) -> Vec<String> {
        let raw = req.untrusted_arg.as_str();
        let mut out: Vec<String> = req.method.canonical_arg(raw).into_iter().collect();
        if req.method == Method::Available {
            return out;
        }
        let Ok(dev) = DeviceRef::from_qarg(raw) else {
            return out;
        };
        let Wild::Is(port) = &dev.port else {
            return out;
        };
        let spell = |device_id: Wild<qubes_pci_rpc::DeviceId>| {
            DeviceRef {
                backend: dev.backend.clone(),
                port: Wild::Is(port.clone()),
                device_id,
            }
            .to_qarg()
        };
        out.push(spell(Wild::Any));
        if let Ok(Some(d)) = Inventory::scan_port(&self.sources.config.sysfs, port) {
            out.push(spell(Wild::Is(d.device_id())));
        }
        let dest = match &req.target {
            Target::AdminVm => Some(QubeName::dom0()),
            Target::Qube(q) => system.resolve(q).and_then(|(name, _)| QubeName::parse(name).ok()),
        };
        if let (Some(dest), Ok(xml)) = (dest, self.sources.qubes_xml()) {
            out.extend(
                xml.records()
                    .into_iter()
                    .filter(|r| r.frontend == dest && &r.port == port)
                    .map(|r| spell(r.device_id)),
            );
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The argument and payload rules every method declares.
fn check_generic(req: &Request) -> Result<(), ApiError> {
    let payload = !req.untrusted_payload.is_empty();
    let arg = !req.untrusted_arg.is_empty();
    let fail = |m: &str| Err(ApiError::Protocol(format!("{}: {m}", req.method)));
    match (req.method.wants_payload(), payload) {
        (Want::Required, false) => return fail("expected payload"),
        (Want::Forbidden, true) => return fail("unexpected payload"),
        _ => {}
    }
    match (req.method.wants_arg(), arg) {
        (Want::Required, false) => fail("expected an argument"),
        (Want::Forbidden, true) => fail("unexpected argument"),
        _ => Ok(()),
    }
}
