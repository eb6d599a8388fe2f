//! `qubes-pci-admin-exec`: the thin qrexec exec entry. qrexec runs it as
//! `/etc/qubes-rpc/admin.vm.device.pci.METHOD` for every call; it relays
//! the call to the running daemon (`qubes-pci-admin serve`) and copies the
//! reply, and when no daemon answers it becomes the full binary
//! (`qubes-pci-admin` beside it, started under the same method name with
//! standard input untouched), which answers the call itself.
//!
//! Nothing here parses flags, sets up logging or reads pci.ids: the relay
//! path is the process start, qrexec's variables, one socket and two
//! copies.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use qubes_pci_admin::handoff::{self, Handoff, Relayed};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let argv1 = args.next();
    // Standard input unbuffered (a descriptor of its own), so that what
    // waits on it sees every byte still to read.
    let Ok(mut stdin) = std::io::stdin().as_fd().try_clone_to_owned().map(std::fs::File::from) else {
        return full_path(argv0, argv1);
    };
    let reply = match handoff::relay_exec(&argv0, argv1.as_deref(), |k| std::env::var_os(k), &mut stdin) {
        Relayed::Answered(Handoff::Answered(reply)) => reply,
        Relayed::Answered(Handoff::Broken(e)) => {
            // The rare path: logging is set up only here.
            qubes_pci_admin::logging::init("info");
            tracing::error!(error = %e, "the daemon took the call but gave no whole reply");
            handoff::broken_reply()
        }
        Relayed::Answered(Handoff::NoDaemon) | Relayed::FullPath => return full_path(argv0, argv1),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&reply).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Replaces this process with the full binary, under the same name (which
/// names the method) and with the same argument, environment and standard
/// input. Returns only when that fails, after writing a typed reply.
fn full_path(argv0: OsString, argv1: Option<OsString>) -> ExitCode {
    let full = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("qubes-pci-admin")))
        .unwrap_or_else(|| "/usr/bin/qubes-pci-admin".into());
    let err = std::process::Command::new(&full).arg0(&argv0).args(argv1).exec();
    qubes_pci_admin::logging::init("info");
    tracing::error!(error = %err, program = %full.display(), "cannot start the full binary");
    let reply = qubes_pci_rpc::Reply::error(
        qubes_pci_rpc::ExceptionKind::QubesException,
        "qubes-pci-admin is not installed correctly in dom0; nothing was changed by this call. A dom0 \
         administrator can find the cause in the journal",
    )
    .encode();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&reply).and_then(|()| out.flush());
    ExitCode::SUCCESS
}
