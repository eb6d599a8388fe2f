//! `qubes-pci`: the PCI client for management qubes. It talks to dom0
//! through `qrexec-client-vm TARGET admin.vm.device.pci.METHOD+ARG` (or the
//! command `--transport` names), in the native protocol or the text one.
//!
//! Built from the `qubes-pci-rpc` crate alone: nothing of the dom0 service
//! is linked in.

mod device;
mod output;

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use qubes_pci_rpc::native::{
    self, Answer, AssignmentEntry, DeviceEntry, NativeError, NativeReply, NativeRequest, RequestBody,
};
use qubes_pci_rpc::{AssignmentMode, ExceptionKind, Method, PciOptions, QubeName, Reply, MAX_REQUEST};

use device::DeviceName;

/// Exit status when the call could not be made or understood (the
/// service's refusals have their own: see `ExceptionKind::code`).
const EXIT_LOCAL: u8 = 1;

#[derive(Parser)]
#[command(
    name = "qubes-pci",
    version,
    about = "Manage dom0's PCI devices from a management qube (admin.vm.device.pci.*)",
    after_help = "Devices are named by port id (00_14.0, dom0:00_1c.0-00_00.0), by address (0000:00:14.0, \
                  00:14.0) or by vendor:device id (8086:8cb1).\n\nExit status: 0 success, 1 the call could not be \
                  made, 2 usage; a refusal by the service exits with its type: 3 PermissionDenied, 4 \
                  DeviceNotFound, 5 DeviceAlreadyAssigned, 6 DeviceNotAssigned, 7 DeviceAlreadyAttached, 8 \
                  QubesVMNotFoundError, 9 QubesVMNotHaltedError, 10 QubesVMNotRunningError, 11 \
                  QubesValueError, 12 QubesUnrecognizedDeviceAssignmentMode, 13 ProtocolError, 14 \
                  QubesException."
)]
struct Cli {
    /// The command that makes a qrexec call; run as CMD TARGET SERVICE+ARG
    /// with the payload on stdin and the reply on stdout.
    #[arg(long, global = true, default_value = "qrexec-client-vm", env = "QUBES_PCI_TRANSPORT")]
    transport: String,
    /// native: typed requests and replies (qubes-pci-admin); text: the
    /// stock Admin API format (works against qubesd too).
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
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

#[derive(Subcommand)]
enum Cmd {
    /// dom0's PCI devices.
    List,
    /// The devices assigned to QUBE.
    Assigned { qube: String },
    /// The devices QUBE took at its start (while it runs).
    Attached { qube: String },
    /// Assign DEVICE to QUBE; it reaches QUBE at its next start.
    Assign {
        qube: String,
        device: String,
        #[arg(long, value_enum, default_value_t = Mode::Required)]
        mode: Mode,
        /// no-strict-reset=True or permissive=True (each needs its own grant in dom0's policy).
        #[arg(short = 'o', long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
    },
    /// Remove the assignment of DEVICE to QUBE (also when the device is gone).
    Unassign { qube: String, device: String },
    /// Change the mode of an assignment, keeping its options.
    SetMode {
        qube: String,
        device: String,
        #[arg(value_enum)]
        mode: Mode,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

/// Why a command failed.
enum Failure {
    /// The service refused.
    Refused(NativeError),
    /// The call could not be made or its reply not understood.
    Local(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Refused(e) => e.code,
            Failure::Local(_) => EXIT_LOCAL,
        }
    }
}

fn local(e: impl std::fmt::Display) -> Failure {
    Failure::Local(e.to_string())
}

/// A successful answer.
enum Success {
    Devices(Vec<DeviceEntry>),
    Assignments(Vec<AssignmentEntry>),
    Done(String),
}

struct Client {
    transport: Vec<String>,
    protocol: Protocol,
}

impl Client {
    /// One call: `target` is the qube the call is for (`dom0` for Available).
    fn call(&self, target: &str, method: Method, arg: &str, body: RequestBody) -> Result<Answer, Failure> {
        let service = if arg.is_empty() {
            method.to_string()
        } else {
            format!("{method}+{arg}")
        };
        let payload = match self.protocol {
            Protocol::Native => native::encode(&NativeRequest::new(body)).map_err(local)?,
            Protocol::Text => NativeRequest::new(body).to_text_payload().map_err(local)?,
        };
        let (program, args) = self
            .transport
            .split_first()
            .ok_or_else(|| Failure::Local("--transport is empty".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .arg(target)
            .arg(&service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::Local(format!("cannot run {program}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&payload).map_err(local)?;
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
                (!arg.is_empty()).then(|| arg.replace('+', ":")),
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
        match self.protocol {
            Protocol::Native => {
                let reply: NativeReply = native::decode(&out.stdout).map_err(|e| {
                    Failure::Local(format!(
                        "the reply is not in the native protocol ({e}); is qubes-pci-admin serving dom0? \
                         try --protocol text"
                    ))
                })?;
                reply.result.map_err(Failure::Refused)
            }
            Protocol::Text => match Reply::decode(&out.stdout) {
                Some(Reply::Ok(body)) => Ok(match method {
                    Method::Available => {
                        Answer::Devices(native::devices_from_text(&body, &QubeName::dom0()).map_err(local)?)
                    }
                    Method::Assigned | Method::Attached => {
                        Answer::Assignments(native::assignments_from_text(&body).map_err(local)?)
                    }
                    _ => Answer::Done,
                }),
                Some(Reply::Err { kind, message }) => Err(Failure::Refused(NativeError::new(
                    kind,
                    message,
                    (!arg.is_empty()).then(|| arg.replace('+', ":")),
                    Some(target.to_owned()),
                ))),
                Some(Reply::Named { name, message }) => Err(Failure::Refused(NativeError::new(
                    // the class qubesadmin raises when a call is refused
                    if name == "QubesDaemonAccessError" {
                        ExceptionKind::PermissionDenied
                    } else {
                        ExceptionKind::QubesException
                    },
                    message,
                    (!arg.is_empty()).then(|| arg.replace('+', ":")),
                    Some(target.to_owned()),
                ))),
                None => Err(Failure::Local("the reply is not in the Admin API format".into())),
            },
        }
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
}

fn qube(name: &str) -> Result<String, Failure> {
    QubeName::parse(name)
        .map(|q| q.to_string())
        .map_err(|e| Failure::Local(e.to_string()))
}

fn options(untrusted: &[String]) -> Result<PciOptions, Failure> {
    let pairs: Vec<(String, String)> = untrusted
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    Failure::Local(format!(
                        "option {o:?}: expected NAME=VALUE, such as no-strict-reset=True"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    PciOptions::from_pairs(&pairs).map_err(local)
}

fn run(cli: &Cli) -> Result<Success, Failure> {
    let client = Client {
        transport: cli.transport.split_whitespace().map(str::to_owned).collect(),
        protocol: cli.protocol,
    };
    match &cli.command {
        Cmd::List => client.devices().map(Success::Devices),
        Cmd::Assigned { qube: q } => client
            .assignments(&qube(q)?, Method::Assigned)
            .map(Success::Assignments),
        Cmd::Attached { qube: q } => client
            .assignments(&qube(q)?, Method::Attached)
            .map(Success::Assignments),
        Cmd::Assign {
            qube: q,
            device,
            mode,
            options: opts,
        } => {
            let q = qube(q)?;
            let options = options(opts)?;
            let dev = DeviceName::parse(device).map_err(local)?.resolve(|| client.devices())?;
            let body = RequestBody::Assignment {
                mode: (*mode).into(),
                options,
                device_id: None,
            };
            client.call(&q, Method::Assign, &dev.qarg(), body)?;
            Ok(Success::Done(format!(
                "assigned {} to {q} ({}{}); it reaches {q} at its next start",
                dev.display(),
                AssignmentMode::from(*mode),
                options.enabled().map(|o| format!(", {o}=True")).collect::<String>()
            )))
        }
        Cmd::Unassign { qube: q, device } => {
            let q = qube(q)?;
            let dev = DeviceName::parse(device).map_err(local)?.resolve(|| client.devices())?;
            client.call(&q, Method::Unassign, &dev.port_qarg(), RequestBody::Empty)?;
            Ok(Success::Done(format!("unassigned {} from {q}", dev.display())))
        }
        Cmd::SetMode { qube: q, device, mode } => {
            let q = qube(q)?;
            let dev = DeviceName::parse(device).map_err(local)?.resolve(|| client.devices())?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "qubes-pci", &mut out);
            return ExitCode::SUCCESS;
        }
        Cmd::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(EXIT_LOCAL),
            };
        }
        _ => {}
    }
    let result = run(&cli);
    let printed = match &result {
        Ok(s) => output::success(&mut out, s, cli.json),
        Err(f) => output::failure(&mut out, f, cli.json),
    };
    match (result, printed) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (Err(f), _) => ExitCode::from(f.code()),
        (Ok(_), Err(_)) => ExitCode::from(EXIT_LOCAL),
    }
}

/// The kind name of a failure, for messages.
fn kind_name(e: &NativeError) -> &str {
    ExceptionKind::from_code(e.code).map_or(e.kind.as_str(), |k| k.name())
}
