//! The request path shared by exec mode, `call` and the daemon: validate,
//! check policy, resolve the qubes, apply the method's generic rules,
//! dispatch.

mod assign;
mod attach;
mod available;
pub mod defaults;
mod facts;
mod listing;

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

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cache::{Kept, Uevents};
use crate::error::ApiError;
use crate::pci::{Inventory, PciNames};
use crate::policy::Policy;
use crate::qubes_xml::QubesXml;
use crate::qubesd::{self as qubesd_wire, Qubesd};
use crate::sysinfo::{DomainInfo, SystemInfo};
use crate::Config;
use qubes_pci_rpc::Target;

/// The service: settings, and (for the daemon) what it keeps between calls
/// until a watch says it changed (see [`crate::cache`]). A service made
/// for one call keeps nothing.
#[derive(Clone)]
pub struct Service {
    pub config: Config,
    qubesd: Qubesd,
    kept: Option<Arc<KeptValues>>,
}

/// What the daemon keeps.
#[derive(Default)]
struct KeptValues {
    policy: Kept<Policy>,
    system: Kept<SystemInfo>,
    xml: Kept<QubesXml>,
    names: Kept<PciNames>,
    /// `None` when nothing would say a device changed (the real `/sys`
    /// without a uevent socket): then devices are read on every call.
    devices: Option<(Kept<Inventory>, Option<Uevents>)>,
    /// The whole `Available` answer, for the devices and names it was
    /// rendered from (the very values kept, compared by identity).
    available: Mutex<Option<RenderedFrom>>,
}

/// A rendered `Available` and the kept values it was rendered from.
type RenderedFrom = (Arc<Inventory>, Arc<PciNames>, Arc<Rendered>);

/// Loads through `kept` when there is one, else directly.
fn through<T, E>(
    kept: Option<&Kept<T>>,
    paths: impl Fn(Option<&T>) -> Vec<PathBuf>,
    also_stale: impl FnOnce() -> bool,
    load: impl Fn() -> Result<T, E>,
) -> Result<Arc<T>, E> {
    match kept {
        Some(k) => k.get(paths, also_stale, load),
        None => load().map(Arc::new),
    }
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
            qubesd: config.qubesd(),
            config,
            kept: None,
        }
    }

    /// A service for the daemon: keeps what it read until it changes.
    /// Device events come from the kernel for the real `/sys`, from
    /// `uevents` when given (a test tree), and otherwise only from inotify
    /// (a test tree changes only through the filesystem).
    pub fn resident(config: Config, uevents: Option<Uevents>) -> Service {
        let real_sys = config.sysfs == Path::new("/sys");
        let uevents = match uevents {
            Some(u) => Some(u),
            None if real_sys => match Uevents::kernel() {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::warn!(
                        "cannot subscribe to the kernel's device events ({e}); devices are read on every call"
                    );
                    None
                }
            },
            None => None,
        };
        let devices = match (real_sys, uevents) {
            (true, None) => None,
            (_, u) => Some((Kept::default(), u)),
        };
        Service {
            qubesd: config.qubesd(),
            config,
            kept: Some(Arc::new(KeptValues {
                devices,
                ..KeptValues::default()
            })),
        }
    }

    pub fn qubesd(&self) -> &Qubesd {
        &self.qubesd
    }

    /// qubesd's qubes.xml as qubesd holds it (R4.2's BDF port ids
    /// converted), parsed again only when the file changed.
    pub fn qubes_xml(&self) -> Result<Arc<QubesXml>, ApiError> {
        let path = &self.config.qubes_xml;
        let loaded = through(
            self.kept.as_deref().map(|k| &k.xml),
            |_| vec![path.clone()],
            || false,
            || QubesXml::load(path),
        )
        .map_err(|detail| {
                ApiError::dom0(
                    "dom0's record of PCI assignments (qubesd's qubes.xml) cannot be read; nothing was changed by this call. A dom0 administrator can find the cause in the journal",
                    detail,
                )
            })?;
        Ok(loaded.as_qubesd_loads(&self.config.sysfs))
    }

    /// One request to qubesd's Admin API as dom0; its refusal keeps its
    /// exception name.
    pub fn forward(&self, method: Method, arg: &str, dest: &QubeName, payload: &[u8]) -> Result<Output, ApiError> {
        tracing::debug!(%method, arg, %dest, "to qubesd");
        match self.qubesd.admin(&method.to_string(), arg, dest, payload)? {
            qubesd_wire::Answer::Ok(_) => Ok(Output::Empty),
            qubesd_wire::Answer::Refused { name, message } => Err(ApiError::Relayed { name, message }),
        }
    }

    /// dom0's PCI devices. The daemon keeps them until a device event
    /// (added, removed, bound, unbound) or a write under a device's
    /// directory says otherwise.
    pub fn inventory(&self) -> Result<Arc<Inventory>, ApiError> {
        let root = &self.config.sysfs;
        let devices = self.kept.as_deref().and_then(|k| k.devices.as_ref());
        let paths = |inv: Option<&Inventory>| {
            let list = root.join("bus/pci/devices");
            let mut p = vec![list.clone(), root.join("devices")];
            p.extend(
                inv.into_iter()
                    .flat_map(|i| &i.devices)
                    .map(|d| list.join(d.sbdf.to_string())),
            );
            p
        };
        let uevents_say = || devices.and_then(|(_, u)| u.as_ref()).is_some_and(Uevents::changed);
        Ok(through(devices.map(|(k, _)| k), paths, uevents_say, || {
            Inventory::scan(root)
        })?)
    }

    /// `Available` for every device, rendered once per kept inventory and
    /// pci.ids.
    pub fn available_rendered(&self) -> Result<Arc<Rendered>, ApiError> {
        let inventory = self.inventory()?;
        let names = self.pci_names();
        let render = || -> Result<Arc<Rendered>, ApiError> {
            Ok(Arc::new(Rendered::new(available::device_infos(
                &inventory, &names, None,
            ))?))
        };
        let Some(kept) = self.kept.as_deref() else {
            return render();
        };
        let Ok(mut memo) = kept.available.lock() else {
            return render();
        };
        if let Some((i, n, r)) = memo.as_ref() {
            if Arc::ptr_eq(i, &inventory) && Arc::ptr_eq(n, &names) {
                return Ok(r.clone());
            }
        }
        let r = render()?;
        *memo = Some((inventory.clone(), names.clone(), r.clone()));
        Ok(r)
    }

    /// pci.ids, indexed again only when the file changed.
    pub fn pci_names(&self) -> Arc<PciNames> {
        let explicit = self.config.pci_ids.as_deref();
        let loaded: Result<_, std::convert::Infallible> = through(
            self.kept.as_deref().map(|k| &k.names),
            |_| PciNames::candidates(explicit),
            || false,
            || Ok(PciNames::load(explicit)),
        );
        match loaded {
            Ok(n) => n,
            Err(never) => match never {},
        }
    }

    /// The policy, parsed again only when a file under the policy
    /// directories (or one they include) changed.
    pub fn policy(&self) -> Result<Arc<Policy>, String> {
        let dirs = self.config.policy_dirs();
        through(
            self.kept.as_deref().map(|k| &k.policy),
            |p| {
                let mut paths = dirs.clone();
                paths.extend(p.into_iter().flat_map(|p| p.files.iter().cloned()));
                paths
            },
            || false,
            || Policy::load_dirs(&dirs).map_err(|e| e.to_string()),
        )
    }

    /// The system info: from the configured file (kept while it does not
    /// change), or asked from qubesd (`internal.GetSystemInfo`) on every call.
    pub fn system_info(&self) -> Result<Arc<SystemInfo>, ApiError> {
        match &self.config.system_info {
            Some(path) => through(
                self.kept.as_deref().map(|k| &k.system),
                |_| vec![path.clone()],
                || false,
                || SystemInfo::load_file(path),
            )
            .map_err(|e| {
                    ApiError::dom0(
                        "the system info given to qubes-pci-admin cannot be read; a dom0 administrator can find the cause in the journal",
                        e.to_string(),
                    )
                }),
            None => Ok(Arc::new(self.qubesd.system_info()?)),
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
                    UntrustedTarget::Keyword(_) => Some("dom0".to_owned()),
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
        let system = self.system_info()?;
        if !req.source.is_dom0() {
            let spellings = self.spellings(&req, &system);
            crate::policy::check(|| self.policy(), &system, &req, &spellings)?;
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
        if let Ok(Some(d)) = Inventory::scan_port(&self.config.sysfs, port) {
            out.push(spell(Wild::Is(d.device_id())));
        }
        let dest = match &req.target {
            Target::AdminVm => Some("dom0"),
            Target::Qube(q) => system.resolve(q).map(|(name, _)| name),
        };
        if let (Some(dest), Ok(xml)) = (dest, self.qubes_xml()) {
            out.extend(
                xml.records()
                    .into_iter()
                    .filter(|r| r.frontend.as_str() == dest && &r.port == port)
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
