//! Exec mode handing a call to the running daemon: qrexec starts a process
//! per call, and most of what a call costs is what the daemon already keeps
//! (the policy, the devices, pci.ids). When the daemon answers on its
//! socket, the process relays the call in the daemon's own socket-service
//! framing and copies the reply; when nothing listens there it answers the
//! call itself.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use qubes_pci_rpc::UntrustedRequest;

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

/// Sends `request` to the daemon at `socket` and reads its whole reply.
pub fn to_daemon(socket: &Path, request: &UntrustedRequest, timeout: Duration) -> Handoff {
    if socket.as_os_str().is_empty() || socket == Path::new("none") {
        return Handoff::NoDaemon;
    }
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Handoff::NoDaemon;
    };
    let mut exchange = || -> std::io::Result<Vec<u8>> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(&request.encode_socket())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        (&mut stream).take(MAX_REPLY).read_to_end(&mut reply)?;
        if reply.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection without a reply",
            ));
        }
        Ok(reply)
    };
    match exchange() {
        Ok(reply) => Handoff::Answered(reply),
        Err(e) => Handoff::Broken(e),
    }
}
