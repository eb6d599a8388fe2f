//! One connection: read the request (header, NUL, payload, EOF) within the
//! deadline and the size cap, answer it, close.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use qubes_pci_rpc::{DecodeError, ExceptionKind, Reply, UntrustedRequest, MAX_REQUEST};

use super::ServeOptions;
use crate::api::Service;

/// Why a request could not be read whole.
enum ReadFailure {
    Deadline,
    Decode(DecodeError),
    Io(std::io::Error),
}

/// Reads until EOF, at most `MAX_REQUEST` bytes, before `deadline`.
fn read_request(stream: &mut UnixStream, opts: &ServeOptions) -> Result<Vec<u8>, ReadFailure> {
    let deadline = Instant::now() + opts.read_deadline;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFailure::Deadline);
        }
        stream.set_read_timeout(Some(left)).map_err(ReadFailure::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => {
                if buf.len() + n > MAX_REQUEST {
                    return Err(ReadFailure::Decode(DecodeError::TooLong));
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ReadFailure::Deadline)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
}

/// Answers one connection; `true` when the reply reported success.
pub fn handle(mut stream: UnixStream, svc: &Service, opts: &ServeOptions) -> bool {
    let (bytes, ok) = match read_request(&mut stream, opts) {
        Ok(buf) if opts.echo => {
            let mut out = b"0\0".to_vec();
            out.extend_from_slice(buf.split(|b| *b == 0).nth(1).unwrap_or_default());
            (out, true)
        }
        Ok(buf) => {
            let r = svc.answer(UntrustedRequest::decode_socket(&buf));
            (r.bytes, r.ok)
        }
        Err(ReadFailure::Deadline) => {
            tracing::warn!(
                deadline_ms = opts.read_deadline.as_millis() as u64,
                "client did not send its whole request in time; cut off"
            );
            let msg = format!(
                "request not complete within {} ms: send the header, a NUL and the payload, then close your end",
                opts.read_deadline.as_millis()
            );
            (Reply::error(ExceptionKind::ProtocolError, msg).encode(), false)
        }
        Err(ReadFailure::Decode(e)) => (svc.answer(Err(e)).bytes, false),
        Err(ReadFailure::Io(e)) => {
            tracing::warn!("cannot read the request: {e}");
            return false;
        }
    };
    let _ = stream.set_write_timeout(Some(opts.read_deadline));
    if let Err(e) = stream.write_all(&bytes) {
        tracing::warn!("cannot send the reply: {e}");
    }
    let _ = stream.shutdown(Shutdown::Both);
    ok
}
