//! `qubes-pci-admin serve`: the resident service behind qrexec socket
//! services. One connection is one call in qrexec's socket-service framing
//! (header, NUL, payload, EOF; then the reply and close), answered by the
//! same handler as exec mode.
//!
//! Threads, not an async runtime: a bounded pool of workers takes accepted
//! connections from a bounded queue, so at most `workers` calls run and at
//! most `workers` more wait; the accept loop waits on the listener and a
//! signalfd for SIGTERM/SIGINT, and wakes up for watchdog pings.

mod conn;
mod notify;

use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::api::Service;
pub use notify::Counters;

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The socket to listen on; `None` takes the socket systemd passes.
    pub socket: Option<PathBuf>,
    /// Calls answered at the same time.
    pub workers: usize,
    /// How long a client may take to send its whole request.
    pub read_deadline: Duration,
    /// Answer every call with `0\0` and its payload, touching nothing: the
    /// transport's own floor, for benchmarks.
    pub echo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no socket to listen on: give --socket PATH, or start the service through its systemd socket unit")]
    NoSocket,
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: std::io::Error },
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Sys { what, source }
}

/// The listening socket, and whether we made the file (and remove it).
fn listener(opts: &ServeOptions) -> Result<(UnixListener, Option<PathBuf>), ServeError> {
    if let Some(path) = &opts.socket {
        return bind(path).map(|l| (l, Some(path.clone())));
    }
    let fd = sd_notify::listen_fds()
        .map_err(sys("reading LISTEN_FDS"))?
        .next()
        .ok_or(ServeError::NoSocket)?;
    // Adopt it only if it really is an open socket (a wrong LISTEN_FDS must
    // not make us take over some other descriptor).
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(sys("checking the passed socket"))?;
    if !link.to_string_lossy().starts_with("socket:") {
        return Err(ServeError::Sys {
            what: "LISTEN_FDS names a descriptor that is not a socket",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is
    // ours, checked by `listen_fds`) for it alone; nothing else in the
    // process owns or closes it, so taking ownership once is sound.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    Ok((listener, None))
}

/// Binds a fresh socket, replacing a stale file of a daemon that is gone
/// (but not the socket of one that still answers).
fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another qubes-pci-admin answers there",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(l)
}

/// Runs until SIGTERM or SIGINT; then stops accepting, finishes the calls
/// already accepted and returns.
pub fn serve(svc: Service, opts: ServeOptions) -> Result<(), ServeError> {
    // Block the stop signals in every thread (workers inherit the mask) and
    // read them from a signalfd in the accept loop.
    let (listener, made) = listener(&opts)?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(|e| ServeError::Sys {
        what: "blocking SIGTERM",
        source: e.into(),
    })?;
    let signals =
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| ServeError::Sys {
            what: "creating a signalfd",
            source: e.into(),
        })?;
    listener
        .set_nonblocking(true)
        .map_err(sys("setting the listener non-blocking"))?;

    let workers = opts.workers.max(1);
    let counters = Arc::new(Counters::default());
    let (tx, rx) = sync_channel::<UnixStream>(workers);
    let rx = Arc::new(Mutex::new(rx));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let rx = rx.clone();
            let svc = svc.clone();
            let counters = counters.clone();
            let opts = opts.clone();
            std::thread::spawn(move || worker(&rx, &svc, &counters, &opts))
        })
        .collect();

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    notify::ready(&counters);
    tracing::info!(workers, "serving admin.vm.device.pci.* calls");
    let stop_reason = accept_loop(&listener, &signals, &tx, &counters, watchdog);
    notify::stopping(&counters);
    tracing::info!(
        reason = stop_reason,
        "stopping: no new connections; finishing the calls in flight"
    );
    drop(listener);
    if let Some(p) = &made {
        let _ = std::fs::remove_file(p);
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    tracing::info!(status = counters.status_line(), "stopped");
    Ok(())
}

fn accept_loop(
    listener: &UnixListener,
    signals: &SignalFd,
    tx: &SyncSender<UnixStream>,
    counters: &Counters,
    watchdog: Option<Duration>,
) -> &'static str {
    let tick = watchdog.unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5));
    let mut last_status = Instant::now();
    loop {
        let timeout = PollTimeout::try_from(tick.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let ready = poll(&mut fds, timeout);
        let [l, s] = fds;
        let listen_ready = l.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        let signal_ready = s.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        if watchdog.is_some() {
            notify::watchdog();
        }
        if last_status.elapsed() >= tick {
            notify::status(counters);
            last_status = Instant::now();
        }
        if signal_ready {
            if let Ok(Some(info)) = signals.read_signal() {
                return if info.ssi_signo == Signal::SIGINT as u32 {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
            }
        }
        if ready.is_err() || !listen_ready {
            continue;
        }
        // Take every pending connection.
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    match tx.try_send(stream) {
                        Ok(()) => {}
                        // Every worker busy and the queue full: wait for room
                        // (bounded concurrency), not for the signal.
                        Err(TrySendError::Full(stream)) => {
                            if tx.send(stream).is_err() {
                                return "workers gone";
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => return "workers gone",
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    break;
                }
            }
        }
    }
}

fn worker(rx: &Mutex<Receiver<UnixStream>>, svc: &Service, counters: &Counters, opts: &ServeOptions) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(stream) = next else { return };
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let ok = conn::handle(stream, svc, opts);
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
