//! The `qubes-pci-admin` binary: the qrexec exec service (when invoked under
//! a method's name) and the administrator's command line.

mod cmd;
#[path = "manpage.rs"]
mod manpage;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use qubes_pci_admin::api::Service;
use qubes_pci_admin::handoff::{self, Handoff};
use qubes_pci_admin::serve::{self, ServeOptions};
use qubes_pci_admin::{logging, Config};
use qubes_pci_rpc::{DecodeError, ExceptionKind, Reply, UntrustedRequest, UntrustedTarget, MAX_REQUEST};

#[derive(Parser)]
#[command(
    name = "qubes-pci-admin",
    version,
    about = "Qubes OS dom0 service for the admin.vm.device.pci.* Admin API"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one Admin API call as qrexec would (payload on stdin, the raw
    /// reply on stdout, exit status = the reply's type digit).
    Call {
        /// The calling qube.
        #[arg(long, allow_hyphen_values = true)]
        source: String,
        /// The requested target: a qube name, or @adminvm.
        #[arg(long, allow_hyphen_values = true)]
        target: String,
        /// METHOD[+ARG], e.g. admin.vm.device.pci.Available
        #[arg(allow_hyphen_values = true)]
        method: String,
    },
    /// Answer one qrexec socket-service connection on stdin/stdout (the
    /// header, a NUL, the payload; then the reply), as under systemd's
    /// `Accept=yes`.
    ServeConnection,
    /// Run the resident service on a Unix socket (qrexec socket-service
    /// framing), from --socket or systemd socket activation. Stops on
    /// SIGTERM after the calls in flight.
    Serve {
        /// Listen here instead of on the socket systemd passes (LISTEN_FDS).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Calls answered at the same time (as many more may wait).
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Milliseconds a client may take to send the request header (qrexec
        /// sends it at once); a connection that sends nothing is cut off then.
        #[arg(long, default_value_t = 1000)]
        header_deadline_ms: u64,
        /// Answer every call with its own payload, doing nothing else (the
        /// transport's floor, for benchmarks).
        #[arg(long, hide = true)]
        echo: bool,
        /// Answer every call with the bytes of this file, doing nothing else
        /// (the floor for a call whose reply has as many bytes).
        #[arg(long, hide = true, value_name = "FILE", conflicts_with = "echo")]
        echo_reply: Option<PathBuf>,
        /// Take device events (kernel uevent messages) from datagrams sent to
        /// this socket instead of the kernel: for a test sysfs tree.
        #[arg(long, hide = true)]
        uevents: Option<PathBuf>,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
    /// Write `0\0` and stdin to stdout: the floor of an exec-mode call, for
    /// benchmarks.
    #[command(hide = true)]
    Echo,
    /// Check or query the qrexec policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The rules, for the qubesd extension: the facts as one JSON object on
    /// stdin, the verdict as one JSON object on stdout ({"ok": true} or
    /// {"ok": false, "exception", "message"}). Exit 0 with a verdict, 2
    /// when the facts do not parse (the extension then refuses).
    #[command(hide = true)]
    Check {
        #[arg(value_enum)]
        kind: qubes_pci_admin::extension::Kind,
    },
    /// Assign every network controller to the net qube and every USB
    /// controller to the USB qube, as the Qubes installer does.
    AssignDefaults {
        /// The qube for network controllers [default: sys-net, skipped
        /// when it does not exist]; `none`: leave them as they are.
        #[arg(long, value_name = "QUBE")]
        net: Option<String>,
        /// The qube for USB controllers [default: sys-usb, skipped when it
        /// does not exist]; `none`: leave them as they are.
        #[arg(long, value_name = "QUBE")]
        usb: Option<String>,
        /// Show what would be assigned; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every problem that would stop QUBE's start with its PCI devices or
    /// weaken it, judged by the rules that refuse starts. Exit status 0
    /// when nothing blocks the start, 1 when something does, 2 when it
    /// cannot tell (an unknown qube, qubesd unreachable).
    Preflight {
        qube: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the rd.qubes.hide_pci= option for dom0's kernel command line
    /// that hides every present device with a required assignment from
    /// dom0's drivers at boot, as PCI paths (the form Qubes R4.3's dracut
    /// module resolves through the bridges; it also accepts SBDF
    /// 0000:00:14.0 and BDF 00:14.0).
    HideList {
        /// Compare with the running kernel's command line (PROCFS/cmdline,
        /// every form dracut accepts, network controllers and
        /// rd.qubes.hide_all_usb included): exit 1 and name each device
        /// assigned but not hidden, or hidden but not assigned; 0 when they
        /// agree.
        #[arg(long)]
        check: bool,
    },
    /// Compare every PCI assignment in qubesd's qubes.xml with the devices
    /// present: moved (the device is at another port now), replaced
    /// (another device is at its port) or gone. Changes nothing unless
    /// --apply.
    Reconcile {
        #[arg(long)]
        json: bool,
        /// Re-point moved assignments through qubesd (same mode and options,
        /// the new one assigned before the old one is removed); for the
        /// others print the qvm-pci unassign command (never run).
        #[arg(long)]
        apply: bool,
    },
    /// List dom0's PCI devices, like qvm-pci.
    List {
        /// One JSON object per device, in an array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Evaluate one request. Exit status: 0 allow, 1 deny, 3 ask, 2 when
    /// the command itself could not run.
    #[command(group(clap::ArgGroup::new("what").args(["batch", "source"]).required(true)))]
    Eval {
        /// One JSON object on stdout instead of key=value lines.
        #[arg(long)]
        json: bool,
        /// Evaluate many requests with one policy load: JSON lines on
        /// stdin ({"source", "target", "service"}, with +ARG in service),
        /// one decision per line on stdout (the --json object). Exit 0 when
        /// every line was evaluated, 2 when a line is not such an object.
        #[arg(long, conflicts_with_all = ["json", "source", "target", "service"])]
        batch: bool,
        /// The calling qube.
        source: Option<String>,
        /// The requested target (a qube, @adminvm, @default, @dispvm…).
        #[arg(requires = "source")]
        target: Option<String>,
        /// SERVICE[+ARG]
        #[arg(requires = "target")]
        service: Option<String>,
    },
    /// Load the policy; on errors print FILE:LINE: message and exit 1.
    Lint,
}

fn main() -> ExitCode {
    // `args_os`: an argument that is not UTF-8 must get a typed reply, not
    // a panic in `args`.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let base = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base.starts_with("admin.") {
        return exec_service(&argv0.to_string_lossy());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { .. } => logging::init("info"),
        Command::Check { .. } | Command::ServeConnection | Command::Call { .. } => logging::init("warn"),
        _ => logging::init_cli(),
    }
    match run(cli) {
        Ok(code) => code,
        // The reader stopped early (`qubes-pci-admin man | head`): a quiet end.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        // 2 is for usage errors (clap's); a command that could not do its
        // work exits 1.
        Err(e) => {
            eprintln!("qubes-pci-admin: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// ENVIRONMENT, FILES and EXIT STATUS of the man page.
fn man_sections() -> Vec<manpage::Section<'static>> {
    let mut env: Vec<(String, String)> = Cli::command()
        .get_arguments()
        .filter_map(|a| {
            let var = a.get_env()?.to_string_lossy().into_owned();
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            Some((var, format!("{help} (as --{})", a.get_long().unwrap_or_default())))
        })
        .collect();
    env.extend([
        (
            "QUBES_PCI_ADMIN_LOG".to_owned(),
            "The log filter (off, error, warn, info, debug). Logs go to the journal when it runs, else to \
             standard error; the daemon and exec mode log info, the commands warnings to the journal only."
                .to_owned(),
        ),
        (
            "QREXEC_REMOTE_DOMAIN, QREXEC_SERVICE_ARGUMENT, QREXEC_REQUESTED_TARGET_TYPE, …".to_owned(),
            "Exec mode (run as /etc/qubes-rpc/admin.vm.device.pci.METHOD) reads the call from qrexec's \
             variables; its settings come from the variables above alone."
                .to_owned(),
        ),
        (
            "QUBES_PCI_ADMIN_BIN".to_owned(),
            "For the qubesd extension: the binary it asks (default /usr/bin/qubes-pci-admin).".to_owned(),
        ),
    ]);
    let files = [
        (
            "/var/lib/qubes/qubes.xml",
            "qubesd's record of assignments, read (never written).",
        ),
        (
            "/etc/qubes/policy.d, /run/qubes/policy.d",
            "dom0's qrexec policy, checked on every call from a qube.",
        ),
        (
            "/etc/qubes/policy.d/85-qubes-pci-admin.policy",
            "the shipped policy: options need their own grant.",
        ),
        (
            "/var/run/qubesd.sock, /var/run/qubesd.internal.sock",
            "qubesd's Admin API and internal API.",
        ),
        (
            "/run/qubes-pci-admin.sock",
            "the daemon's socket (qubes-pci-admin.socket).",
        ),
        (
            "/usr/local/etc/qubes-rpc/admin.vm.device.pci.*",
            "the switch-over: qrexec's entries for the eight methods, linked to the daemon's socket.",
        ),
        (
            "/usr/share/qubes-pci-admin/qubes-rpc/{socket,exec}",
            "the qrexec service entries, socket style (the daemon) and exec style (one process per call).",
        ),
        ("/sys", "dom0's PCI devices, block devices and btrfs filesystems."),
        (
            "/proc/self/mountinfo, /proc/swaps, /proc/cmdline",
            "what dom0 uses, and what its kernel hides at boot.",
        ),
        ("/usr/share/hwdata/pci.ids", "device names (a copy is built in)."),
    ];
    let exit = [
        (
            "exec mode, serve-connection",
            "0 whenever a reply was written (the reply carries the outcome).",
        ),
        ("call", "0 for a success reply, 2 for a refusal."),
        (
            "policy eval",
            "0 allow, 1 deny, 3 ask, 2 when no decision could be made.",
        ),
        ("policy lint", "0 when the policy loads, 1 when it does not."),
        (
            "preflight",
            "0 when nothing blocks the start, 1 when something does, 2 when it cannot tell.",
        ),
        (
            "hide-list --check",
            "0 when the kernel command line hides what is assigned, 1 when not.",
        ),
        (
            "assign-defaults",
            "0 when something was done or nothing needed doing, 1 otherwise.",
        ),
        (
            "other commands",
            "0 success, 1 failure; 2 is a usage error, for every command.",
        ),
    ];
    vec![
        manpage::Section {
            title: "ENVIRONMENT",
            items: env,
        },
        manpage::Section {
            title: "FILES",
            items: files.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
        },
        manpage::Section {
            title: "EXIT STATUS",
            items: exit.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
        },
    ]
}

/// Reads at most `MAX_REQUEST` bytes; more is a `TooLong` error, and the
/// rest is never read into memory.
fn read_capped(r: impl Read) -> std::io::Result<Result<Vec<u8>, DecodeError>> {
    let mut buf = Vec::new();
    r.take(MAX_REQUEST as u64 + 1).read_to_end(&mut buf)?;
    Ok(if buf.len() > MAX_REQUEST {
        Err(DecodeError::TooLong)
    } else {
        Ok(buf)
    })
}

/// Standard input, read (capped) on a thread so that a caller that never
/// closes its end is answered at the deadline: `None` then (the thread ends
/// with the process).
fn read_within(deadline: std::time::Duration) -> Option<std::io::Result<Result<Vec<u8>, DecodeError>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_capped(std::io::stdin().lock()));
    });
    rx.recv_timeout(deadline).ok()
}

/// The typed refusal of a request not complete by the deadline.
fn too_slow(config: &Config, what_to_do: &str) -> Vec<u8> {
    let ms = config.read_deadline_ms;
    tracing::warn!(
        deadline_ms = ms,
        "caller did not send its whole request in time; cut off"
    );
    Reply::error(
        ExceptionKind::ProtocolError,
        format!("request not complete within {ms} ms: {what_to_do}"),
    )
    .encode()
}

/// Exec-service mode: qrexec ran `/etc/qubes-rpc/<method>`. The reply is
/// always written and the exit status is 0 whenever it was, because
/// qubesadmin discards the reply of a service that exits non-zero. Every
/// step, reading the arguments included, runs under the panic guard.
fn exec_service(argv0: &str) -> ExitCode {
    logging::init("info");
    let reply = std::panic::catch_unwind(|| exec_reply(argv0)).unwrap_or_else(|_| {
        Reply::error(
            ExceptionKind::QubesException,
            "internal error in qubes-pci-admin; see the dom0 journal",
        )
        .encode()
    });
    let mut out = std::io::stdout().lock();
    match out.write_all(&reply).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn exec_reply(argv0: &str) -> Vec<u8> {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // The variable names and values are dom0's business: the
            // journal gets them, the caller only what happened.
            tracing::error!(error = %e, "bad qubes-pci-admin settings in the environment");
            return Reply::error(
                ExceptionKind::QubesException,
                "qubes-pci-admin is misconfigured in dom0; nothing was changed by this call. A dom0 \
                 administrator can find the cause in the journal",
            )
            .encode();
        }
    };
    let svc = Service::new(config);
    let not_utf8 = |what| Err(DecodeError::Framing(what));
    let argv1 = std::env::args_os().nth(1);
    let request = if argv1.as_ref().is_some_and(|a| a.to_str().is_none()) {
        not_utf8("the service argument is not UTF-8")
    } else if qubes_pci_rpc::request::QREXEC_VARS
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| v.to_str().is_none()))
    {
        not_utf8("a qrexec variable is not UTF-8")
    } else {
        let argv1 = argv1.and_then(|a| a.into_string().ok());
        match read_within(svc.sources.config.read_deadline()) {
            None => return too_slow(&svc.sources.config, "send the payload, then close your end"),
            Some(Err(e)) => Err(DecodeError::Framing(if e.kind() == std::io::ErrorKind::InvalidData {
                "unreadable payload"
            } else {
                "cannot read the payload"
            })),
            Some(Ok(payload)) => payload
                .and_then(|p| UntrustedRequest::decode_exec(argv0, argv1.as_deref(), |k| std::env::var(k).ok(), p)),
        }
    };
    // A well-formed call goes to the daemon when one answers (what cannot
    // be framed, or is not valid, is answered here with its typed error).
    if let Ok(untrusted) = &request {
        if untrusted.clone().validate().is_ok() {
            let timeout = handoff::reply_timeout(svc.sources.config.qubesd_timeout_ms);
            match handoff::to_daemon(&svc.sources.config.daemon_socket, untrusted, timeout) {
                Handoff::Answered(reply) => return reply,
                Handoff::NoDaemon => {}
                Handoff::Broken(e) => {
                    tracing::error!(error = %e, "the daemon took the call but gave no whole reply");
                    return handoff::broken_reply();
                }
            }
        }
    }
    svc.answer(request).bytes
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Serve { uevents, .. } = &cli.command {
        let source = match uevents {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let sock = std::os::unix::net::UnixDatagram::bind(path)
                    .with_context(|| format!("binding the uevent socket {}", path.display()))?;
                Some(qubes_pci_admin::cache::Uevents::from_socket(sock)?)
            }
            None => None,
        };
        let svc = Service::resident(cli.config, source);
        return run_with(svc, cli.command);
    }
    let svc = Service::new(cli.config);
    run_with(svc, cli.command)
}

fn run_with(svc: Service, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Call { source, target, method } => {
            let request = read_capped(std::io::stdin().lock())
                .context("reading the payload from stdin")?
                .map(|payload| {
                    let (m, a) = method.split_once('+').unwrap_or((&method, ""));
                    let untrusted_target = match target.strip_prefix('@') {
                        Some(k) => UntrustedTarget::Keyword(k.to_owned()),
                        None => UntrustedTarget::Name(target.clone()),
                    };
                    UntrustedRequest {
                        untrusted_method: m.to_owned(),
                        untrusted_arg: a.to_owned(),
                        untrusted_source: source.clone(),
                        untrusted_target,
                        untrusted_payload: payload,
                    }
                });
            let reply = svc.answer(request);
            std::io::stdout().write_all(&reply.bytes).context("writing the reply")?;
            Ok(ExitCode::from(if reply.ok { 0 } else { 2 }))
        }
        Command::ServeConnection => {
            let request = match read_within(svc.sources.config.read_deadline()) {
                Some(read) => read
                    .context("reading the request from stdin")?
                    .and_then(|buf| UntrustedRequest::decode_socket(&buf)),
                None => {
                    let reply = too_slow(
                        &svc.sources.config,
                        "send the header, a NUL and the payload, then close your end",
                    );
                    std::io::stdout().write_all(&reply).context("writing the reply")?;
                    return Ok(ExitCode::SUCCESS);
                }
            };
            let reply = svc.answer(request);
            std::io::stdout().write_all(&reply.bytes).context("writing the reply")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            socket,
            workers,
            header_deadline_ms,
            echo,
            echo_reply,
            ..
        } => {
            let echo = match echo_reply {
                Some(file) => Some(serve::Echo::Fixed(
                    std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?
                        .into(),
                )),
                None => echo.then_some(serve::Echo::Payload),
            };
            let opts = ServeOptions {
                socket,
                workers,
                read_deadline: svc.sources.config.read_deadline(),
                header_deadline: std::time::Duration::from_millis(header_deadline_ms),
                echo,
            };
            serve::serve(svc, opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "qubes-pci-admin", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            manpage::render(Cli::command(), &man_sections(), &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo => {
            let mut input = Vec::new();
            std::io::stdin().take(MAX_REQUEST as u64).read_to_end(&mut input)?;
            let mut out = std::io::stdout().lock();
            out.write_all(b"0\0")?;
            out.write_all(&input)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(cmd) => cmd::inspect::policy(&svc, cmd),
        Command::Check { kind } => cmd::assignments::check(&svc, kind),
        Command::AssignDefaults {
            net,
            usb,
            dry_run,
            json,
        } => cmd::assignments::assign_defaults(&svc, net.as_deref(), usb.as_deref(), dry_run, json),
        Command::Preflight { qube, json } => cmd::diagnose::preflight(&svc, &qube, json),
        Command::HideList { check } => cmd::diagnose::hide_list(&svc, check),
        Command::Reconcile { json, apply } => cmd::diagnose::reconcile(&svc, json, apply),
        Command::List { json } => {
            cmd::inspect::list(&svc, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
