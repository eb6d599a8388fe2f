//! Exec mode handing a call to the running daemon: qrexec starts a process
//! per call, and most of what a call costs is what the daemon already keeps
//! (the policy, the devices, pci.ids). When the daemon answers on its
//! socket, the process relays the call in the daemon's own socket-service
//! framing and copies the reply; when nothing listens there it answers the
//! call itself.
//!
//! Two programs do this: the full binary in exec mode (after it has read
//! and framed the call), and the thin exec entry `qubes-pci-admin-exec`
//! ([`relay_exec`]), which reads nothing but qrexec's variables, streams
//! standard input to the daemon, and only starts the full binary when no
//! daemon answers. Everything here uses the standard library and the wire
//! types alone: no clap, no tracing, no pci.ids.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qubes_pci_rpc::{ExceptionKind, Reply, UntrustedRequest};

use crate::config;

/// The largest reply relayed (far above any listing).
const MAX_REPLY: u64 = 64 << 20;

/// What became of a handed-over call.
#[derive(Debug)]
pub enum Handoff {
    /// The daemon's reply, to be written as it is.
    Answered(Vec<u8>),
    /// Nobody listens: answer the call here. Nothing was sent.
    NoDaemon,
    /// The call was sent but no whole reply came back: the call may or may
    /// not have taken effect, so it must not be run a second time here.
    Broken(std::io::Error),
}

/// The reply to a call the daemon took but did not answer whole.
pub fn broken_reply() -> Vec<u8> {
    Reply::error(
        ExceptionKind::QubesException,
        "qubes-pci-admin stopped while answering this call, so it may or may not have taken effect: check \
         with qvm-pci list before trying again",
    )
    .encode()
}

/// The daemon's socket, or `None` when handing over is turned off (an
/// empty path, or `none`).
fn daemon_at(socket: &Path) -> Option<&Path> {
    (!socket.as_os_str().is_empty() && socket != Path::new("none")).then_some(socket)
}

/// Sends `header` then everything `payload` gives, and reads the whole
/// reply, in one thread: the payload is copied only while it comes, so
/// that a caller that never closes its end does not keep the reply from
/// being read (the daemon cuts such a caller off at its read deadline and
/// answers). No reply within `timeout` of the last byte read is an error.
fn exchange(
    stream: &mut UnixStream,
    header: &[u8],
    mut payload: Option<&mut dyn ReadFd>,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(header)?;
    if payload.is_none() {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let wait = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let mut reply = Vec::with_capacity(128 << 10);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let ready = {
            let mut fds = vec![PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
            if let Some(p) = payload.as_deref() {
                fds.push(PollFd::new(p.fd(), PollFlags::POLLIN));
            }
            if poll(&mut fds, wait)? == 0 {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            let any = |f: Option<&PollFd>| f.and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
            (any(fds.first()), any(fds.get(1)))
        };
        if ready.1 {
            if let Some(p) = payload.as_deref_mut() {
                let n = p.read(&mut buf)?;
                let sent = buf.get(..n).unwrap_or_default();
                // The daemon may have answered and closed already (a
                // request too long, a deadline): its reply says why.
                if n == 0 || stream.write_all(sent).is_err() {
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    payload = None;
                }
            }
        }
        if ready.0 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(buf.get(..n).unwrap_or_default());
            if reply.len() as u64 > MAX_REPLY {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the reply is too long",
                ));
            }
        }
    }
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without a reply",
        ));
    }
    Ok(reply)
}

/// What a payload is read from: a reader with a descriptor to wait on.
pub trait ReadFd: Read {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl ReadFd for std::fs::File {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.as_fd()
    }
}

impl ReadFd for UnixStream {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.as_fd()
    }
}

/// Sends `request` to the daemon at `socket` and reads its whole reply.
pub fn to_daemon(socket: &Path, request: &UntrustedRequest, timeout: Duration) -> Handoff {
    let Some(socket) = daemon_at(socket) else {
        return Handoff::NoDaemon;
    };
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Handoff::NoDaemon;
    };
    match exchange(&mut stream, &request.encode_socket(), None, timeout) {
        Ok(reply) => Handoff::Answered(reply),
        Err(e) => Handoff::Broken(e),
    }
}

/// How long the daemon may take to answer a handed-over call: as long as
/// qubesd may take, and then some for the daemon's own work.
pub fn reply_timeout(qubesd_timeout_ms: u64) -> Duration {
    Duration::from_millis(qubesd_timeout_ms.saturating_add(10_000))
}

/// What the thin exec entry did.
#[derive(Debug)]
pub enum Relayed {
    /// The daemon's reply (or the typed error for a broken exchange) is
    /// the call's answer.
    Answered(Handoff),
    /// Nothing was read or sent: the full binary must answer the call
    /// (no daemon, settings it must report, or a call it must refuse).
    FullPath,
}

/// The thin exec entry: frames the call from qrexec's variables and
/// relays it, standard input streamed as the payload, to the daemon.
/// Anything unusual (a variable that is not UTF-8 or does not frame back
/// to the same call, settings that do not parse, no daemon) is left to the
/// full binary, which answers it with its typed error; so this never
/// decides anything about a call.
pub fn relay_exec(
    argv0: &OsStr,
    argv1: Option<&OsStr>,
    env: impl Fn(&str) -> Option<OsString>,
    stdin: &mut dyn ReadFd,
) -> Relayed {
    let text = |v: Option<OsString>| v.map(OsString::into_string);
    let (Some(argv0), Ok(argv1)) = (argv0.to_str(), argv1.map(|a| a.to_str().ok_or(())).transpose()) else {
        return Relayed::FullPath;
    };
    if qubes_pci_rpc::request::QREXEC_VARS
        .iter()
        .any(|k| matches!(text(env(k)), Some(Err(_))))
    {
        return Relayed::FullPath;
    }
    let var = |k: &str| text(env(k)).and_then(Result::ok);
    let Ok(request) = UntrustedRequest::decode_exec(argv0, argv1, var, Vec::new()) else {
        return Relayed::FullPath;
    };
    // The header must read back as this very call (no space or NUL in a
    // field, ASCII): otherwise the full binary refuses it properly.
    let header = request.encode_socket();
    if UntrustedRequest::decode_socket(&header).as_ref() != Ok(&request) {
        return Relayed::FullPath;
    }
    let socket =
        var(config::DAEMON_SOCKET_ENV).map_or_else(|| PathBuf::from(config::DEFAULT_DAEMON_SOCKET), PathBuf::from);
    let timeout = match var(config::QUBESD_TIMEOUT_ENV) {
        None => config::DEFAULT_QUBESD_TIMEOUT_MS,
        Some(ms) => match ms.parse() {
            Ok(ms) => ms,
            Err(_) => return Relayed::FullPath,
        },
    };
    let Some(socket) = daemon_at(&socket) else {
        return Relayed::FullPath;
    };
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Relayed::FullPath;
    };
    Relayed::Answered(
        match exchange(&mut stream, &header, Some(stdin), reply_timeout(timeout)) {
            Ok(reply) => Handoff::Answered(reply),
            Err(e) => Handoff::Broken(e),
        },
    )
}
