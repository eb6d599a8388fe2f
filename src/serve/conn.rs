//! One connection: its request read without blocking by the reading thread
//! (header, NUL, payload, EOF, within the deadlines and the size cap), then
//! answered by a worker, and closed.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use qubes_pci_rpc::{DecodeError, ExceptionKind, Reply, UntrustedRequest, MAX_REQUEST};

use super::{Echo, ServeOptions};
use crate::api::Service;

/// Why a request could not be read whole.
pub enum ReadFailure {
    /// No NUL (end of the header) before the header deadline.
    HeaderDeadline,
    /// The header came, the rest not before the read deadline.
    Deadline,
    /// Cut off before its deadline to make room: the oldest of too many
    /// connections still sending their requests.
    Crowded,
    Decode(DecodeError),
    Io(std::io::Error),
}

/// What a worker does with a connection.
pub enum Job {
    /// A whole request.
    Request(UnixStream, Vec<u8>),
    /// A request that could not be read: answered with a typed reply.
    Failed(UnixStream, ReadFailure),
}

/// A connection still sending its request.
pub struct Pending {
    pub stream: UnixStream,
    buf: Vec<u8>,
    started: Instant,
    header_done: bool,
}

/// What reading a pending connection gave.
pub enum Progress {
    More(Pending),
    Done(Job),
}

impl Pending {
    pub fn new(stream: UnixStream) -> std::io::Result<Pending> {
        stream.set_nonblocking(true)?;
        Ok(Pending {
            stream,
            buf: Vec::new(),
            started: Instant::now(),
            header_done: false,
        })
    }

    /// When this connection is cut off if it has not finished.
    pub fn deadline(&self, opts: &ServeOptions) -> Instant {
        let limit = if self.header_done {
            opts.read_deadline
        } else {
            opts.header_deadline.min(opts.read_deadline)
        };
        self.started + limit
    }

    /// Reads what has arrived, without blocking.
    pub fn read(mut self) -> Progress {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Progress::Done(Job::Request(self.stream, self.buf)),
                Ok(n) => {
                    let got = chunk.get(..n).unwrap_or_default();
                    if self.buf.len() + n > MAX_REQUEST {
                        return Progress::Done(Job::Failed(self.stream, ReadFailure::Decode(DecodeError::TooLong)));
                    }
                    self.header_done |= got.contains(&0);
                    self.buf.extend_from_slice(got);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Progress::More(self),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Progress::Done(Job::Failed(self.stream, ReadFailure::Io(e))),
            }
        }
    }

    /// The deadline passed.
    /// When it was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Cut off to make room for newer connections.
    pub fn evict(self) -> Job {
        Job::Failed(self.stream, ReadFailure::Crowded)
    }

    pub fn cut_off(self) -> Job {
        let why = if self.header_done {
            ReadFailure::Deadline
        } else {
            ReadFailure::HeaderDeadline
        };
        Job::Failed(self.stream, why)
    }
}

/// Answers one job; `true` when the reply reported success.
pub fn handle(job: Job, svc: &Service, opts: &ServeOptions) -> bool {
    let (mut stream, bytes, ok) = match job {
        Job::Request(stream, buf) if opts.echo.is_some() => {
            let out = match &opts.echo {
                Some(Echo::Fixed(reply)) => reply.to_vec(),
                _ => {
                    let mut out = b"0\0".to_vec();
                    out.extend_from_slice(buf.split(|b| *b == 0).nth(1).unwrap_or_default());
                    out
                }
            };
            (stream, out, true)
        }
        Job::Request(stream, buf) => match UntrustedRequest::decode_socket(&buf) {
            // The qubesd extension's rule check (see `extension::CHECK_METHOD`).
            Ok(r) if r.untrusted_method == crate::extension::CHECK_METHOD => {
                let bytes = crate::extension::answer_check(
                    &svc.sources.config,
                    &r.untrusted_arg,
                    &r.untrusted_source,
                    &r.untrusted_payload,
                );
                let ok = bytes.starts_with(b"0\0");
                (stream, bytes, ok)
            }
            request => {
                let r = svc.answer(request);
                (stream, r.bytes, r.ok)
            }
        },
        Job::Failed(stream, ReadFailure::HeaderDeadline) => {
            tracing::warn!(
                deadline_ms = opts.header_deadline.as_millis() as u64,
                "client did not send a request header in time; cut off"
            );
            let msg = format!(
                "no request header within {} ms: send METHOD+ARG SOURCE name|keyword TARGET, a NUL, the payload, \
                 then close your end",
                opts.header_deadline.as_millis()
            );
            (stream, Reply::error(ExceptionKind::ProtocolError, msg).encode(), false)
        }
        Job::Failed(stream, ReadFailure::Deadline) => {
            tracing::warn!(
                deadline_ms = opts.read_deadline.as_millis() as u64,
                "client did not send its whole request in time; cut off"
            );
            let msg = format!(
                "request not complete within {} ms: send the header, a NUL and the payload, then close your end",
                opts.read_deadline.as_millis()
            );
            (stream, Reply::error(ExceptionKind::ProtocolError, msg).encode(), false)
        }
        Job::Failed(stream, ReadFailure::Crowded) => {
            tracing::warn!("too many connections were still sending their requests; the oldest was cut off");
            let msg = "cut off before the deadline: too many connections were still sending their requests, and \
                       this was the oldest. Send the header, a NUL and the payload at once, then close your end";
            (stream, Reply::error(ExceptionKind::ProtocolError, msg).encode(), false)
        }
        Job::Failed(stream, ReadFailure::Decode(e)) => (stream, svc.answer(Err(e)).bytes, false),
        Job::Failed(_, ReadFailure::Io(e)) => {
            tracing::warn!("cannot read the request: {e}");
            return false;
        }
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(opts.read_deadline));
    if let Err(e) = stream.write_all(&bytes) {
        tracing::warn!("cannot send the reply: {e}");
    }
    let _ = stream.shutdown(Shutdown::Both);
    ok
}
