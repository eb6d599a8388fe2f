//! Talking to qubesd as dom0: one request per connection on its Unix
//! sockets (the qrexec socket-service framing `METHOD+ARG dom0 name DEST`,
//! a NUL, the payload, end of input), every call bounded by a deadline.
//! qubesd serves the Admin API on one socket and `internal.*` on another.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qubes_pci_rpc::{Assignment, QubeName, Reply, UntrustedRequest, UntrustedTarget};

use crate::sysinfo::SystemInfo;

/// The largest answer read from qubesd (system info of many qubes).
const MAX_ANSWER: usize = 64 << 20;

/// Why qubesd could not be asked. The text names the socket: it is for the
/// journal, never for the calling qube.
#[derive(Debug, thiserror::Error)]
pub enum QubesdError {
    #[error("cannot connect to qubesd at {socket}: {source}")]
    Connect { socket: String, source: std::io::Error },
    #[error("qubesd at {socket} did not answer {method} within {ms} ms")]
    Timeout { socket: String, method: String, ms: u128 },
    #[error("talking to qubesd at {socket} ({method}): {source}")]
    Io {
        socket: String,
        method: String,
        source: std::io::Error,
    },
    #[error("qubesd at {socket} closed the connection without an answer to {method} (its journal says why)")]
    Empty { socket: String, method: String },
    #[error("qubesd at {socket} answered {method} with something that is not a qubesd reply")]
    Malformed { socket: String, method: String },
    #[error("qubesd at {socket} answered {method} with more than {MAX_ANSWER} bytes")]
    TooLarge { socket: String, method: String },
    #[error("qubesd's answer to {method} does not parse: {detail}")]
    Unexpected { method: String, detail: String },
    /// The whole request reached qubesd, then its answer did not: qubesd
    /// may or may not have done it.
    #[error("{0} (qubesd had the whole request)")]
    Sent(Box<QubesdError>),
}

impl QubesdError {
    /// The whole request reached qubesd before this went wrong: a change it
    /// asked for may or may not have been made.
    pub fn was_sent(&self) -> bool {
        matches!(self, QubesdError::Sent(_))
    }
}

/// What qubesd answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Ok(Vec<u8>),
    /// An exception: its class name (checked to be an identifier) and message.
    Refused {
        name: String,
        message: String,
    },
}

impl Answer {
    /// Parses `0\0body` or `2\0Name\0traceback\0message\0`, as a client
    /// does ([`Reply::decode`]): the traceback is dropped, the name must be
    /// an identifier.
    pub fn parse(untrusted: &[u8]) -> Option<Answer> {
        Some(match Reply::decode(untrusted)? {
            Reply::Ok(body) => Answer::Ok(body),
            Reply::Err { kind, message } => Answer::Refused {
                name: kind.name().to_owned(),
                message,
            },
            Reply::Named { name, message } => Answer::Refused { name, message },
        })
    }
}

/// Where qubesd listens and how long it may take.
#[derive(Clone, Debug)]
pub struct Qubesd {
    pub admin: PathBuf,
    pub internal: PathBuf,
    pub timeout: Duration,
}

impl Qubesd {
    /// One Admin API call as dom0.
    pub fn admin(&self, method: &str, arg: &str, dest: &QubeName, payload: &[u8]) -> Result<Answer, QubesdError> {
        call(&self.admin, self.timeout, method, arg, dest.as_str(), payload)
    }

    /// `internal.GetSystemInfo`, on the internal socket.
    pub fn system_info(&self) -> Result<SystemInfo, QubesdError> {
        let method = "internal.GetSystemInfo";
        let body = expect_ok(
            method,
            call(&self.internal, self.timeout, method, "", QubeName::dom0().as_str(), b"")?,
        )?;
        SystemInfo::parse(&body, "qubesd").map_err(|e| QubesdError::Unexpected {
            method: method.to_owned(),
            detail: e.to_string(),
        })
    }

    /// A qube's `virt_mode` and whether it is qubesd's default rather than
    /// set on the qube (`admin.vm.property.Get` answers `default=True
    /// type=str pvh`: a fresh qube reads pvh until its first PCI
    /// assignment, hvm after).
    pub fn virt_mode(&self, qube: &QubeName) -> Result<(String, bool), QubesdError> {
        let method = "admin.vm.property.Get";
        let body = expect_ok(method, self.admin(method, "virt_mode", qube, b"")?)?;
        let text = String::from_utf8_lossy(&body);
        parse_property(&text).ok_or_else(|| QubesdError::Unexpected {
            method: method.to_owned(),
            detail: format!("virt_mode of {qube} is {text:?}"),
        })
    }

    /// A qube's property as `admin.vm.property.Get` answers it: the value
    /// (possibly empty) and whether it is qubesd's default.
    pub fn property(&self, qube: &QubeName, name: &str) -> Result<(String, bool), QubesdError> {
        let method = "admin.vm.property.Get";
        let body = expect_ok(method, self.admin(method, name, qube, b"")?)?;
        let text = String::from_utf8_lossy(&body);
        let mut f = text.splitn(3, ' ');
        let default = match f.next() {
            Some("default=True") => Some(true),
            Some("default=False") => Some(false),
            _ => None,
        };
        match (default, f.next().and_then(|t| t.strip_prefix("type="))) {
            (Some(default), Some(_)) => Ok((f.next().unwrap_or_default().to_owned(), default)),
            _ => Err(QubesdError::Unexpected {
                method: method.to_owned(),
                detail: format!("{name} of {qube} is {text:?}"),
            }),
        }
    }

    /// What `admin.vm.device.pci.Attached` says of a qube, parsed.
    pub fn attached(&self, qube: &QubeName) -> Result<Vec<Assignment>, QubesdError> {
        let method = "admin.vm.device.pci.Attached";
        let body = expect_ok(method, self.admin(method, "", qube, b"")?)?;
        Assignment::parse_lines(&body).map_err(|e| QubesdError::Unexpected {
            method: method.to_owned(),
            detail: e.to_string(),
        })
    }
}

/// `default=True|False type=TYPE VALUE`: the value and whether it is the
/// default. Only lower-case ASCII values (what `virt_mode` takes).
fn parse_property(text: &str) -> Option<(String, bool)> {
    let mut f = text.splitn(3, ' ');
    let default = match f.next()? {
        "default=True" => true,
        "default=False" => false,
        _ => return None,
    };
    f.next()?.strip_prefix("type=")?;
    let value = f.next()?;
    (!value.is_empty() && value.chars().all(|c| c.is_ascii_lowercase())).then(|| (value.to_owned(), default))
}

/// A read whose answer must be a success: a refusal of a read the front
/// door makes as dom0 means qubesd is not in the state we expect.
fn expect_ok(method: &str, answer: Answer) -> Result<Vec<u8>, QubesdError> {
    match answer {
        Answer::Ok(body) => Ok(body),
        Answer::Refused { name, message } => Err(QubesdError::Unexpected {
            method: method.to_owned(),
            detail: format!("{name}: {message}"),
        }),
    }
}

/// One request on `socket`, answered within `timeout`.
pub fn call(
    socket: &Path,
    timeout: Duration,
    method: &str,
    arg: &str,
    dest: &str,
    payload: &[u8],
) -> Result<Answer, QubesdError> {
    let shown = socket.display().to_string();
    let io = |source| QubesdError::Io {
        socket: shown.clone(),
        method: method.to_owned(),
        source,
    };
    let deadline = Instant::now() + timeout;
    let timed_out = || QubesdError::Timeout {
        socket: shown.clone(),
        method: method.to_owned(),
        ms: timeout.as_millis(),
    };
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let mut stream = UnixStream::connect(socket).map_err(|source| QubesdError::Connect {
        socket: shown.clone(),
        source,
    })?;
    let request = UntrustedRequest {
        untrusted_method: method.to_owned(),
        untrusted_arg: arg.to_owned(),
        untrusted_source: QubeName::dom0().to_string(),
        untrusted_target: UntrustedTarget::Name(dest.to_owned()),
        untrusted_payload: payload.to_vec(),
    }
    .encode_socket();
    stream
        .set_write_timeout(Some(left().ok_or_else(timed_out)?))
        .map_err(io)?;
    stream.write_all(&request).map_err(|e| timeout_or(e, timed_out, io))?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    receive(stream, left, timed_out, io, &shown, method).map_err(|e| QubesdError::Sent(Box::new(e)))
}

/// qubesd's answer on `stream`, which has the whole request, by the
/// deadline `left` counts down to.
fn receive(
    mut stream: UnixStream,
    left: impl Fn() -> Option<Duration>,
    timed_out: impl Fn() -> QubesdError,
    io: impl Fn(std::io::Error) -> QubesdError,
    shown: &str,
    method: &str,
) -> Result<Answer, QubesdError> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        stream
            .set_read_timeout(Some(left().ok_or_else(&timed_out)?))
            .map_err(&io)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if answer.len() > MAX_ANSWER {
                    return Err(QubesdError::TooLarge {
                        socket: shown.to_owned(),
                        method: method.to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timeout_or(e, &timed_out, &io)),
        }
    }
    if answer.is_empty() {
        return Err(QubesdError::Empty {
            socket: shown.to_owned(),
            method: method.to_owned(),
        });
    }
    Answer::parse(&answer).ok_or(QubesdError::Malformed {
        socket: shown.to_owned(),
        method: method.to_owned(),
    })
}

fn timeout_or(
    e: std::io::Error,
    timed_out: impl FnOnce() -> QubesdError,
    io: impl FnOnce(std::io::Error) -> QubesdError,
) -> QubesdError {
    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
        timed_out()
    } else {
        io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(Answer::parse(b"0\0"), Some(Answer::Ok(vec![])));
        assert_eq!(
            Answer::parse(b"2\0QubesVMInUseError\0trace\0in use 100%%\0"),
            Some(Answer::Refused {
                name: "QubesVMInUseError".into(),
                message: "in use 100%".into()
            })
        );
        for bad in [
            &b""[..],
            b"1\0event",
            b"2\0\0\0m\0",
            b"2\0Bad Name\0\0m\0",
            b"2\0X\0\0m",
            b"2\0X\0\0m\0extra",
            b"2\0../x\0\0m\0",
        ] {
            assert_eq!(Answer::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn properties_carry_their_default_flag() {
        assert_eq!(parse_property("default=True type=str pvh"), Some(("pvh".into(), true)));
        assert_eq!(
            parse_property("default=False type=str pvh"),
            Some(("pvh".into(), false))
        );
        assert_eq!(
            parse_property("default=False type=str hvm"),
            Some(("hvm".into(), false))
        );
        for bad in [
            "",
            "default=True type=str ",
            "default=maybe type=str hvm",
            "default=True str hvm",
            "hvm",
        ] {
            assert_eq!(parse_property(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_silent_qubesd_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let held = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let start = Instant::now();
        let e = call(&path, Duration::from_millis(150), "m", "", "dom0", b"").unwrap_err();
        assert!(
            matches!(&e, QubesdError::Sent(inner) if matches!(**inner, QubesdError::Timeout { .. })),
            "{e}"
        );
        assert!(e.was_sent(), "it had the whole request");
        assert!(start.elapsed() < Duration::from_millis(500));
        held.join().unwrap();
        let e = call(
            &dir.path().join("none"),
            Duration::from_millis(150),
            "m",
            "",
            "dom0",
            b"",
        )
        .unwrap_err();
        assert!(matches!(e, QubesdError::Connect { .. }), "{e}");
    }
}
