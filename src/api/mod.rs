//! The request path shared by exec mode, `call` and the daemon: validate,
//! check policy, resolve the qubes, apply the method's generic rules,
//! dispatch.

mod assign;
mod attach;
mod available;
mod listing;

use std::time::Instant;

use qubes_pci_rpc::method::Want;
use qubes_pci_rpc::{DecodeError, DeviceRef, Method, PciPath, QubeName, Reply, Request, UntrustedRequest, Wild};

pub use assign::{apply_assign, find_for_arg, record_of, AssignOutcome, OPTION_SERVICE};
pub use available::{describe, device_infos};

use crate::config::QUBESD_SOCKET;
use crate::error::ApiError;
use crate::store::Store;
use crate::sysinfo::{DomainInfo, SystemInfo};
use crate::Config;

/// The service: settings plus what each call loads.
#[derive(Clone, Debug)]
pub struct Service {
    pub config: Config,
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
    pub system: SystemInfo,
    /// The destination's name in the system info.
    pub dest: String,
}

impl Call {
    pub fn dest_is_dom0(&self) -> bool {
        self.dest == "dom0"
    }

    /// The destination as a validated name.
    pub fn dest_name(&self) -> Result<QubeName, ApiError> {
        Ok(QubeName::parse(&self.dest)?)
    }

    pub fn dest_info(&self) -> Option<&DomainInfo> {
        self.system.domains.get(&self.dest)
    }

    /// The device argument of a write method. PCI devices belong to dom0:
    /// another backend names no device.
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
        if d.port == Wild::Any && self.req.method != Method::Assigned && self.req.method != Method::Attached {
            return Err(ApiError::DeviceNotFound(format!(
                "{}: name the device by its port id, such as dom0+00_14.0 (qvm-pci lists them)",
                self.req.method
            )));
        }
        Ok(d.clone())
    }
}

impl Service {
    pub fn new(config: Config) -> Service {
        Service { config }
    }

    pub fn store(&self) -> Store {
        Store::new(&self.config.state_dir)
    }

    pub fn system_info(&self) -> Result<SystemInfo, ApiError> {
        Ok(match &self.config.system_info {
            Some(path) => SystemInfo::load_file(path)?,
            None => SystemInfo::load_qubesd(std::path::Path::new(QUBESD_SOCKET))?,
        })
    }

    /// Answers one request. Never panics on input; every failure is a
    /// typed error reply.
    pub fn handle(&self, untrusted: Result<UntrustedRequest, DecodeError>) -> Reply {
        let start = Instant::now();
        let (method, source, target, arg) = match &untrusted {
            Ok(u) => (
                u.untrusted_method.clone(),
                u.untrusted_source.clone(),
                format!("{:?}", u.untrusted_target),
                u.untrusted_arg.clone(),
            ),
            Err(_) => Default::default(),
        };
        let result = untrusted.map_err(ApiError::from).and_then(|u| self.dispatch(u));
        let micros = start.elapsed().as_micros() as u64;
        match result {
            Ok(body) => {
                tracing::info!(
                    method,
                    source,
                    target,
                    arg,
                    decision = "ok",
                    duration_us = micros,
                    "call"
                );
                Reply::Ok(body)
            }
            Err(e) => {
                let kind = e.kind().name();
                tracing::warn!(method, source, target, arg, decision = kind, duration_us = micros, error = %e, "call");
                e.to_reply()
            }
        }
    }

    fn dispatch(&self, untrusted: UntrustedRequest) -> Result<Vec<u8>, ApiError> {
        let req = untrusted.validate()?;
        let system = self.system_info()?;
        crate::policy::check(&self.config, &system, &req)?;
        let dest = match &req.target {
            qubes_pci_rpc::Target::AdminVm => "dom0".to_owned(),
            qubes_pci_rpc::Target::Qube(q) => match system.resolve(q) {
                Some((name, _)) => name.to_owned(),
                None if req.target.is_dom0() => "dom0".to_owned(),
                None => return Err(ApiError::NoSuchQube(q.to_string())),
            },
        };
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
