//! `qubes-pci`: the PCI client for management qubes. It talks to dom0
//! through `qrexec-client-vm TARGET admin.vm.device.pci.METHOD+ARG` (or the
//! command `--transport` names), in the native protocol or the text one.
//!
//! Built from the `qubes-pci-rpc` crate alone: nothing of the dom0 service
//! is linked in.

mod device;
#[path = "../manpage.rs"]
mod manpage;
mod output;

use std::cell::Cell;
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use qubes_pci_rpc::native::{
    self, Answer, AssignmentEntry, DeviceEntry, NativeError, NativeReply, NativeRequest, RequestBody,
};
use qubes_pci_rpc::{AssignmentMode, ExceptionKind, Method, PciOptions, QubeName, Reply, MAX_REQUEST};

/// Exit status when the call could not be made or understood (the
/// service's refusals have their own: see `ExceptionKind::code`).
const EXIT_LOCAL: u8 = 1;
/// Exit status of a usage error (clap's).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "qubes-pci",
    version,
    about = "Manage dom0's PCI devices from a management qube, as qvm-pci does (admin.vm.device.pci.*)",
    after_help = "Devices are named as qvm-pci names them, dom0:PORT_ID (dom0:00_14.0, \
                  dom0:00_1c.0-00_00.0) or dom0:PORT_ID:DEVICE_ID, and also by address (0000:00:14.0, 00:14.0) \
                  or by vendor:device id (8086:8cb1); every name of a device means the same assignment.\n\n\
                  Exit status (the same however the device was named): 0 success, 1 the call could not be \
                  made, 2 usage; a refusal exits with its type: 3 PermissionDenied, 4 DeviceNotFound, 5 \
                  DeviceAlreadyAssigned, 6 DeviceNotAssigned, 7 DeviceAlreadyAttached, 8 QubesVMNotFoundError, \
                  9 QubesVMNotHaltedError, 10 QubesVMNotRunningError, 11 QubesValueError, 12 \
                  QubesUnrecognizedDeviceAssignmentMode, 13 ProtocolError, 14 QubesException.\n\n\
                  JSON (--json), one shape for qubes-pci and qubes-pci-admin: list gives an array of devices \
                  {backend, port_id, device_id, sbdf, description, vendor, product, class_name, driver, bridge \
                  (boolean), reset_methods (array; empty: no reset method), data (object of strings), \
                  assigned_to (array of {qube, mode, options}, or null when not known)}; info one device; \
                  list QUBE, assigned and attached an array of assignments {backend, port_id, device_id, \
                  frontend, mode, options, attached (boolean)}; a change {ok: true, message}; any failure \
                  {error: {type, code, message, device, qube}} with type the exception name, local or usage \
                  and code the exit status. options is an object of booleans ({\"no-strict-reset\": true}). \
                  The JSON Schema is docs/json-schema.json in the source."
)]
struct Cli {
    /// The command that makes a qrexec call; run as CMD TARGET SERVICE+ARG
    /// with the payload on stdin and the reply on stdout.
    #[arg(long, global = true, default_value = "qrexec-client-vm", env = "QUBES_PCI_TRANSPORT")]
    transport: String,
    /// native: typed requests and replies (qubes-pci-admin), falling back
    /// to text by itself when dom0 answers in text; text: the stock Admin
    /// API format (works against qubesd too).
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// JSON on stdout instead of tables (errors too); the shapes are below.
    #[arg(long, global = true)]
    json: bool,
    /// Without a command: list.
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Native,
    Text,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Required,
    AutoAttach,
    AskToAttach,
}

impl From<Mode> for AssignmentMode {
    fn from(m: Mode) -> AssignmentMode {
        match m {
            Mode::Required => AssignmentMode::Required,
            Mode::AutoAttach => AssignmentMode::AutoAttach,
            Mode::AskToAttach => AssignmentMode::AskToAttach,
        }
    }
}

/// How an assignment names its device, as qvm-pci's flags say.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
#[group(multiple = false)]
struct Identity {
    /// Ignore the device's identity: whatever device sits at the port.
    #[arg(long = "port", visible_alias = "only-port")]
    only_port: bool,
    /// Ignore the port: the device wherever it sits (dom0 refuses this for PCI).
    #[arg(long = "device", visible_alias = "only-device")]
    only_device: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// dom0's PCI devices and who they are assigned to; with QUBE, the
    /// devices assigned to and attached to QUBE.
    #[command(visible_aliases = ["ls", "l"])]
    List { qube: Option<String> },
    /// One device in detail.
    #[command(visible_alias = "i")]
    Info { device: String },
    /// Assign DEVICE to QUBE; it reaches QUBE at its next start. PCI
    /// devices need --required, as with qvm-pci.
    #[command(visible_alias = "s")]
    Assign {
        qube: String,
        device: String,
        /// The qube does not start without the device (what PCI needs).
        #[arg(short = 'r', long, conflicts_with = "ask")]
        required: bool,
        /// Ask before attaching (not for PCI devices).
        #[arg(long, visible_alias = "ask-to-attach")]
        ask: bool,
        /// no-strict-reset=True or permissive=True (each needs its own
        /// grant in dom0's policy); repeatable.
        #[arg(short = 'o', long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
        #[command(flatten)]
        identity: Identity,
    },
    /// Remove the assignment of DEVICE (every assignment, without DEVICE)
    /// from QUBE; also when the device is gone.
    #[command(visible_alias = "u")]
    Unassign {
        qube: String,
        device: Option<String>,
        #[command(flatten)]
        identity: Identity,
    },
    /// Attach DEVICE to running QUBE now: PCI devices are never hot-plugged,
    /// so dom0 answers with what to do instead (assign, then restart QUBE).
    #[command(visible_aliases = ["at", "a"])]
    Attach {
        qube: String,
        device: String,
        #[arg(short = 'o', long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
        /// The same as `assign --required`, as in qvm-pci.
        #[arg(short = 'p', long)]
        persistent: bool,
    },
    /// Detach DEVICE (every device, without DEVICE) from running QUBE:
    /// PCI devices leave a qube when it stops.
    #[command(visible_aliases = ["d", "dt"])]
    Detach { qube: String, device: Option<String> },
    /// Change the mode of an assignment, keeping its options.
    SetMode {
        qube: String,
        device: String,
        #[arg(value_enum)]
        mode: Mode,
    },
    /// The devices assigned to QUBE.
    Assigned { qube: String },
    /// The devices QUBE took at its start (while it runs).
    Attached { qube: String },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

/// Why a command failed.
pub enum Failure {
    /// The service refused (or the device named is not there: the same
    /// DeviceNotFound whichever way it was named).
    Refused(NativeError),
    /// The call could not be made or its reply not understood.
    Local(String),
    /// The command line is wrong.
    Usage(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Refused(e) => e.code,
            Failure::Local(_) => EXIT_LOCAL,
            Failure::Usage(_) => EXIT_USAGE,
        }
    }

    /// A refusal made here, of the kind dom0 would give.
    pub fn refused(kind: ExceptionKind, message: impl Into<String>, device: Option<String>) -> Failure {
        Failure::Refused(NativeError::new(kind, message.into(), device, None))
    }
}

fn local(e: impl std::fmt::Display) -> Failure {
    Failure::Local(e.to_string())
}

/// A device with who it is assigned to (`None`: not known, because the
/// qubes could not be listed).
pub struct DeviceView {
    pub entry: DeviceEntry,
    pub assigned_to: Option<Vec<AssignmentEntry>>,
}

/// A successful answer.
pub enum Success {
    Devices(Vec<DeviceView>),
    Device(DeviceView),
    /// Assignments, each with whether the qube has it attached now.
    Assignments(Vec<(AssignmentEntry, bool)>),
    Done(String),
}

struct Client {
    transport: Vec<String>,
    /// Native until dom0 answers in text; then text for the rest.
    protocol: Cell<Protocol>,
}

/// The raw reply of one qrexec call.
fn exchange(transport: &[String], target: &str, service: &str, payload: &[u8]) -> Result<Vec<u8>, Failure> {
    let (program, args) = transport
        .split_first()
        .ok_or_else(|| Failure::Local("--transport is empty".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .arg(target)
        .arg(service)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound && program == "qrexec-client-vm" {
                ": qubes-pci runs in a qube and calls dom0 through qrexec-client-vm; elsewhere give --transport \
                 CMD (CMD TARGET SERVICE+ARG makes one call, the payload on stdin)"
            } else {
                ""
            };
            Failure::Local(format!("cannot run {program}: {e}{hint}"))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(payload).map_err(local)?;
    }
    let out = child.wait_with_output().map_err(local)?;
    if out.stdout.len() > 64 * MAX_REQUEST {
        return Err(Failure::Local("the reply is too large".into()));
    }
    if out.stdout.is_empty() && String::from_utf8_lossy(&out.stderr).contains("Request refused") {
        // qrexec's own policy check refused the call before it reached dom0's service.
        return Err(Failure::Refused(NativeError::new(
            ExceptionKind::PermissionDenied,
            format!("the qrexec policy refused {service} for {target} (dom0's /etc/qubes/policy.d decides)"),
            None,
            Some(target.to_owned()),
        )));
    }
    if out.stdout.is_empty() {
        return Err(Failure::Local(format!(
            "no reply to {service} from {target} ({}{})",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        )));
    }
    Ok(out.stdout)
}

/// A refusal as this client's user reads it: qubesd's own terse messages
/// (`'pci device dom0:00_01.0:* not assigned to media'`) said plainly, and
/// the commands dom0 suggests (qvm-pci's) as this client's.
fn rephrase(message: &str) -> String {
    let quoted = message.trim().trim_matches('\'');
    let plain = |rest: &str, what: &str, next: &str| -> Option<String> {
        let (device, qube) = rest.split_once(what)?;
        let (device, qube) = (device.trim(), qube.trim());
        let device = device.strip_suffix(":*").unwrap_or(device);
        Some(format!("{device} is {what} {qube}{}", next.replace("QUBE", qube)))
    };
    if let Some(rest) = quoted.strip_prefix("pci device ") {
        let said = plain(rest, "not assigned to", " (qubes-pci assigned QUBE lists what is)")
            .or_else(|| plain(rest, "already assigned to", " (qubes-pci assigned QUBE lists it)"))
            .or_else(|| plain(rest, "not attached to", " (qubes-pci attached QUBE lists what is)"));
        if let Some(said) = said {
            return said;
        }
    }
    message.replace("`qvm-pci ", "`qubes-pci ")
}

impl Client {
    /// One call: `target` is the qube the call is for (`dom0` for Available).
    fn call(&self, target: &str, method: Method, arg: &str, body: RequestBody) -> Result<Answer, Failure> {
        let service = if arg.is_empty() {
            method.to_string()
        } else {
            format!("{method}+{arg}")
        };
        let device = (!arg.is_empty()).then(|| arg.replace('+', ":"));
        let refused = |kind, message: String| {
            Failure::Refused(NativeError::new(
                kind,
                rephrase(&message),
                device.clone(),
                Some(target.to_owned()),
            ))
        };
        let text = |reply: &[u8]| -> Result<Answer, Failure> {
            match Reply::decode(reply) {
                Some(Reply::Ok(body)) => Ok(match method {
                    Method::Available => {
                        Answer::Devices(native::devices_from_text(&body, &QubeName::dom0()).map_err(local)?)
                    }
                    Method::Assigned | Method::Attached => {
                        Answer::Assignments(native::assignments_from_text(&body).map_err(local)?)
                    }
                    _ => Answer::Done,
                }),
                Some(Reply::Err { kind, message }) => Err(refused(kind, message)),
                Some(Reply::Named { name, message }) => Err(refused(
                    // the class qubesadmin raises when a call is refused
                    if name == "QubesDaemonAccessError" {
                        ExceptionKind::PermissionDenied
                    } else {
                        ExceptionKind::from_name(&name).unwrap_or(ExceptionKind::QubesException)
                    },
                    message,
                )),
                None => Err(Failure::Local("the reply is not in the Admin API format".into())),
            }
        };
        if self.protocol.get() == Protocol::Text {
            let payload = NativeRequest::new(body).to_text_payload().map_err(local)?;
            return text(&exchange(&self.transport, target, &service, &payload)?);
        }
        let payload = native::encode(&NativeRequest::new(body.clone())).map_err(local)?;
        let reply = exchange(&self.transport, target, &service, &payload)?;
        if let Ok(r) = native::decode::<NativeReply>(&reply) {
            return r.result.map_err(|mut e| {
                e.message = rephrase(&e.message);
                Failure::Refused(e)
            });
        }
        // dom0 answers in text (qubesd, or a service that does not speak
        // the native protocol): it did not take the native payload, so the
        // call is made again in text, and so is every later one.
        if Reply::decode(&reply).is_none() {
            return Err(Failure::Local(
                "the reply is neither in the native protocol nor in the Admin API format".into(),
            ));
        }
        if method.is_read_only() || !matches!(Reply::decode(&reply), Some(Reply::Ok(_))) {
            self.protocol.set(Protocol::Text);
            let payload = NativeRequest::new(body).to_text_payload().map_err(local)?;
            return text(&exchange(&self.transport, target, &service, &payload)?);
        }
        text(&reply)
    }

    fn devices(&self) -> Result<Vec<DeviceEntry>, Failure> {
        match self.call("dom0", Method::Available, "", RequestBody::Empty)? {
            Answer::Devices(d) => Ok(d),
            _ => Err(Failure::Local("Available answered something else than devices".into())),
        }
    }

    fn assignments(&self, qube: &str, method: Method) -> Result<Vec<AssignmentEntry>, Failure> {
        match self.call(qube, method, "", RequestBody::Empty)? {
            Answer::Assignments(a) => Ok(a),
            _ => Err(Failure::Local(format!(
                "{method} answered something else than assignments"
            ))),
        }
    }

    /// The qubes dom0 lists (`admin.vm.List`), when the policy lets this
    /// qube ask; `None` otherwise.
    fn qubes(&self) -> Option<Vec<String>> {
        let reply = exchange(&self.transport, "dom0", "admin.vm.List", b"").ok()?;
        let Some(Reply::Ok(body)) = Reply::decode(&reply) else {
            return None;
        };
        let text = String::from_utf8(body).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| *n != "dom0" && QubeName::parse(n).is_ok())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Every assignment of every qube this qube may read.
    fn all_assignments(&self) -> Option<Vec<AssignmentEntry>> {
        let mut all = Vec::new();
        for q in self.qubes()? {
            match self.assignments(&q, Method::Assigned) {
                Ok(a) => all.extend(a.into_iter().map(|mut e| {
                    e.frontend.get_or_insert(q.clone());
                    e
                })),
                // Qubes it may not read are left out, as qvm-pci does.
                Err(Failure::Refused(_)) => {}
                Err(_) => return None,
            }
        }
        Some(all)
    }
}

fn qube(name: &str) -> Result<String, Failure> {
    QubeName::parse(name)
        .map(|q| q.to_string())
        .map_err(|e| Failure::Usage(e.to_string()))
}

fn options(untrusted: &[String]) -> Result<PciOptions, Failure> {
    let pairs: Vec<(String, String)> = untrusted
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "option {o:?}: expected NAME=VALUE, such as no-strict-reset=True"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    PciOptions::from_pairs(&pairs).map_err(|e| Failure::Usage(e.to_string()))
}

/// A device that no qube starts with unless its assignment has
/// no-strict-reset: no reset method. Bridges never leave dom0, so for them
/// it does not matter.
fn no_reset(d: &DeviceEntry) -> bool {
    let data = |key: &str, value: &str| d.data.iter().any(|(k, v)| k == key && v == value);
    data("reset_method", "none") && !data("bridge", "True")
}

/// The stderr line for a device without a reset method.
fn no_reset_warning(d: &DeviceEntry) -> String {
    format!(
        "warning: dom0:{} has no reset method: a qube it is assigned to starts only if the assignment has \
         no-strict-reset=True (qubes-pci assign --required -o no-strict-reset=True QUBE dom0:{}, with dom0's grant)",
        d.port, d.port
    )
}

/// Every device, with who it is assigned to when this qube may know.
fn list_all(client: &Client, warn: &mut Vec<String>) -> Result<Success, Failure> {
    let devices = client.devices()?;
    let all = client.all_assignments();
    if all.is_none() {
        warn.push(
            "note: who each device is assigned to is not shown: dom0's policy does not let this qube list \
             qubes (admin.vm.List) or read their assignments"
                .to_owned(),
        );
    }
    warn.extend(devices.iter().filter(|d| no_reset(d)).map(no_reset_warning));
    Ok(Success::Devices(
        devices
            .into_iter()
            .map(|d| DeviceView {
                assigned_to: all
                    .as_ref()
                    .map(|a| a.iter().filter(|e| e.port == d.port).cloned().collect()),
                entry: d,
            })
            .collect(),
    ))
}

fn run(cli: &Cli, warn: &mut Vec<String>) -> Result<Success, Failure> {
    let client = Client {
        transport: cli.transport.split_whitespace().map(str::to_owned).collect(),
        protocol: Cell::new(cli.protocol),
    };
    let resolve = |name: &str| -> Result<device::Resolved, Failure> {
        device::DeviceName::parse(name)
            .map_err(|e| Failure::refused(ExceptionKind::DeviceNotFound, e.to_string(), Some(name.to_owned())))?
            .resolve(|| client.devices())
    };
    let Some(command) = &cli.command else {
        return list_all(&client, warn);
    };
    match command {
        Cmd::List { qube: None } => list_all(&client, warn),
        Cmd::List { qube: Some(q) } => {
            let q = qube(q)?;
            let assigned = client.assignments(&q, Method::Assigned)?;
            let attached = client.assignments(&q, Method::Attached)?;
            let mut rows: Vec<(AssignmentEntry, bool)> = assigned
                .into_iter()
                .map(|a| {
                    let on = attached.iter().any(|t| t.port == a.port);
                    (a, on)
                })
                .collect();
            for t in attached {
                if !rows.iter().any(|(a, _)| a.port == t.port) {
                    rows.push((t, true));
                }
            }
            Ok(Success::Assignments(rows))
        }
        Cmd::Info { device } => {
            let dev = resolve(device)?;
            let entry = client
                .devices()?
                .into_iter()
                .find(|d| d.port == dev.port.to_string())
                .ok_or_else(|| {
                    Failure::refused(
                        ExceptionKind::DeviceNotFound,
                        format!("dom0 has no device at {}", dev.display()),
                        Some(dev.display()),
                    )
                })?;
            if no_reset(&entry) {
                warn.push(no_reset_warning(&entry));
            }
            let assigned_to = client
                .all_assignments()
                .map(|a| a.into_iter().filter(|e| e.port == entry.port).collect());
            Ok(Success::Device(DeviceView { entry, assigned_to }))
        }
        Cmd::Assigned { qube: q } => Ok(Success::Assignments(
            client
                .assignments(&qube(q)?, Method::Assigned)?
                .into_iter()
                .map(|a| (a, false))
                .collect(),
        )),
        Cmd::Attached { qube: q } => Ok(Success::Assignments(
            client
                .assignments(&qube(q)?, Method::Attached)?
                .into_iter()
                .map(|a| (a, true))
                .collect(),
        )),
        Cmd::Assign {
            qube: q,
            device,
            required,
            ask,
            options: opts,
            identity,
        } => {
            let mode = if *required {
                Mode::Required
            } else if *ask {
                Mode::AskToAttach
            } else {
                Mode::AutoAttach
            };
            assign(
                &client,
                &qube(q)?,
                device,
                mode,
                &options(opts)?,
                *identity,
                &resolve,
                warn,
            )
        }
        Cmd::Attach {
            qube: q,
            device,
            options: opts,
            persistent: true,
        } => assign(
            &client,
            &qube(q)?,
            device,
            Mode::Required,
            &options(opts)?,
            Identity::default(),
            &resolve,
            warn,
        ),
        Cmd::Attach {
            qube: q,
            device,
            options: opts,
            ..
        } => {
            let q = qube(q)?;
            let options = options(opts)?;
            let dev = resolve(device)?;
            let body = RequestBody::Assignment {
                mode: AssignmentMode::Manual,
                options,
                device_id: None,
            };
            client.call(&q, Method::Attach, &dev.qarg(), body)?;
            Ok(Success::Done(format!("attached {} to {q}", dev.display())))
        }
        Cmd::Detach { qube: q, device } => {
            let q = qube(q)?;
            let targets = named_or_all(&client, &q, device.as_deref(), Method::Attached, &resolve)?;
            for t in &targets {
                client.call(&q, Method::Detach, t, RequestBody::Empty)?;
            }
            Ok(Success::Done(format!("detached {} device(s) from {q}", targets.len())))
        }
        Cmd::Unassign {
            qube: q,
            device,
            identity,
        } => {
            let q = qube(q)?;
            if identity.only_device {
                return Err(Failure::refused(
                    ExceptionKind::QubesValueError,
                    "PCI assignments are by port: name the device's port (qubes-pci list shows them)",
                    device.clone(),
                ));
            }
            let ports = named_or_all(&client, &q, device.as_deref(), Method::Assigned, &resolve)?;
            for p in &ports {
                client.call(&q, Method::Unassign, p, RequestBody::Empty)?;
            }
            Ok(Success::Done(match device {
                Some(_) => format!("unassigned {} from {q}", ports.join(", ").replace("dom0+", "dom0:")),
                None => format!("unassigned {} device(s) from {q}", ports.len()),
            }))
        }
        Cmd::SetMode { qube: q, device, mode } => {
            let q = qube(q)?;
            let dev = resolve(device)?;
            client.call(
                &q,
                Method::SetAssignment,
                &dev.port_qarg(),
                RequestBody::Mode((*mode).into()),
            )?;
            Ok(Success::Done(format!(
                "{} on {q} is now {}",
                dev.display(),
                AssignmentMode::from(*mode)
            )))
        }
        Cmd::Completions { .. } | Cmd::Man => Err(Failure::Local("handled before".into())),
    }
}

/// The `dom0+PORT` arguments of the device named, or, without a name, of
/// every device `listing` (Assigned or Attached) gives for `q`.
fn named_or_all(
    client: &Client,
    q: &str,
    device: Option<&str>,
    listing: Method,
    resolve: &dyn Fn(&str) -> Result<device::Resolved, Failure>,
) -> Result<Vec<String>, Failure> {
    Ok(match device {
        Some(d) => vec![resolve(d)?.port_qarg()],
        None => client
            .assignments(q, listing)?
            .iter()
            .map(|a| format!("dom0+{}", a.port))
            .collect(),
    })
}

/// `assign` (and `attach --persistent`): the device resolved to its port
/// and its current identity, so that every name of a device makes the same
/// assignment.
#[allow(clippy::too_many_arguments)]
fn assign(
    client: &Client,
    q: &str,
    device: &str,
    mode: Mode,
    options: &PciOptions,
    identity: Identity,
    resolve: &dyn Fn(&str) -> Result<device::Resolved, Failure>,
    warn: &mut Vec<String>,
) -> Result<Success, Failure> {
    if identity.only_device {
        return Err(Failure::refused(
            ExceptionKind::QubesValueError,
            "PCI assignments are by port: assign without --device (qubes-pci list shows the ports)",
            Some(device.to_owned()),
        ));
    }
    let mut dev = resolve(device)?;
    if identity.only_port {
        dev.device_id = None;
    }
    let entry = dev.entry.clone();
    let body = RequestBody::Assignment {
        mode: mode.into(),
        options: *options,
        device_id: None,
    };
    client.call(q, Method::Assign, &dev.qarg(), body)?;
    if let Some(e) = entry.filter(|e| no_reset(e) && !options.no_strict_reset) {
        warn.push(format!(
            "warning: {} has no reset method, so {q} will not start with it: assign it with -o \
             no-strict-reset=True (dom0's policy must grant admin.vm.device.pci.Option+no-strict-reset)",
            dev.display()
        ));
        let _ = e;
    }
    Ok(Success::Done(format!(
        "assigned {} to {q} ({}{}); it reaches {q} at its next start",
        dev.display(),
        AssignmentMode::from(mode),
        options.enabled().map(|o| format!(", {o}=True")).collect::<String>()
    )))
}

fn main() -> ExitCode {
    let json = std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if json && e.use_stderr() => {
            let mut out = std::io::stdout().lock();
            let _ = output::failure(&mut out, &Failure::Usage(e.kind().to_string()), true);
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(*shell, &mut Cli::command(), "qubes-pci", &mut out);
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Man) => {
            return match manpage::render(Cli::command(), &man_sections(), &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                // The reader stopped (`qubes-pci man | head`): nothing to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(EXIT_LOCAL),
            };
        }
        _ => {}
    }
    let mut warnings = Vec::new();
    let result = run(&cli, &mut warnings);
    for w in &warnings {
        eprintln!("qubes-pci: {w}");
    }
    let printed = match &result {
        Ok(s) => output::success(&mut out, s, cli.json),
        Err(f) => output::failure(&mut out, f, cli.json),
    };
    match (result, printed) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (Err(f), _) => ExitCode::from(f.code()),
        // The reader stopped early (`qubes-pci list | head`): a quiet end.
        (Ok(_), Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        (Ok(_), Err(_)) => ExitCode::from(EXIT_LOCAL),
    }
}

/// ENVIRONMENT and FILES of the man page (EXIT STATUS is in the text
/// after the options).
fn man_sections() -> Vec<manpage::Section<'static>> {
    vec![
        manpage::Section {
            title: "ENVIRONMENT",
            items: vec![(
                "QUBES_PCI_TRANSPORT".to_owned(),
                "The command that makes one qrexec call (as --transport; default qrexec-client-vm).".to_owned(),
            )],
        },
        manpage::Section {
            title: "FILES",
            items: vec![(
                "/usr/bin/qrexec-client-vm".to_owned(),
                "qrexec's client in a qube: each call goes to dom0 through it, under dom0's policy.".to_owned(),
            )],
        },
        manpage::Section {
            title: "EXIT STATUS",
            items: [
                (0u8, "success"),
                (EXIT_LOCAL, "the call could not be made"),
                (EXIT_USAGE, "usage"),
            ]
            .into_iter()
            .map(|(c, what)| (c.to_string(), what.to_owned()))
            .chain(
                (3u8..=14)
                    .filter_map(ExceptionKind::from_code)
                    .map(|k| (k.code().to_string(), format!("dom0 refused: {}", k.name()))),
            )
            .collect(),
        },
    ]
}

/// The kind name of a failure, for messages.
fn kind_name(e: &NativeError) -> &str {
    ExceptionKind::from_code(e.code).map_or(e.kind.as_str(), |k| k.name())
}
