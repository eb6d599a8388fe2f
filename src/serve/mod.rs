//! `qubes-pci-admin serve`: the resident service behind qrexec socket
//! services. One connection is one call in qrexec's socket-service framing
//! (header, NUL, payload, EOF; then the reply and close), answered by the
//! same handler as exec mode.
//!
//! Threads, not an async runtime. One thread accepts connections and reads
//! every request at once (non-blocking, one `poll` over the listener, the
//! signalfd and every connection still sending), so a client that connects
//! and sends nothing never holds a worker: it is cut off at the header
//! deadline (qrexec writes the header at once) or, once the header came, at
//! the read deadline. Only complete requests go to the bounded pool of
//! workers, through a bounded queue, so at most `workers` calls run.

mod conn;
mod notify;

use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use conn::{Job, Pending, Progress};
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
    /// How long a client may take to send the header (up to the NUL).
    pub header_deadline: Duration,
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
    let (tx, rx) = sync_channel::<Job>(workers);
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
    let mut reader = Reader {
        listener: Some(&listener),
        signals: &signals,
        tx: &tx,
        counters: &counters,
        watchdog,
        opts: &opts,
        pending: Vec::new(),
        ready: std::collections::VecDeque::new(),
    };
    let stop_reason = reader.run();
    notify::stopping(&counters);
    tracing::info!(
        reason = stop_reason,
        "stopping: no new connections; finishing the calls in flight"
    );
    reader.listener = None;
    if let Some(p) = &made {
        let _ = std::fs::remove_file(p);
    }
    // Connections accepted before the stop are still read and answered.
    reader.drain();
    drop(reader);
    drop(listener);
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    tracing::info!(status = counters.status_line(), "stopped");
    Ok(())
}

/// Connections read at the same time; past this, no more are accepted
/// until some finish (they wait in the listen backlog).
const MAX_PENDING: usize = 512;

/// The accepting and reading thread.
struct Reader<'a> {
    listener: Option<&'a UnixListener>,
    signals: &'a SignalFd,
    tx: &'a SyncSender<Job>,
    counters: &'a Counters,
    watchdog: Option<Duration>,
    opts: &'a ServeOptions,
    /// Connections still sending their request.
    pending: Vec<Pending>,
    /// Jobs waiting for room in the workers' queue.
    ready: std::collections::VecDeque<Job>,
}

impl Reader<'_> {
    /// Until SIGTERM/SIGINT: accept, read, hand complete requests over.
    fn run(&mut self) -> &'static str {
        let tick = self
            .watchdog
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        let mut last_status = Instant::now();
        loop {
            if self.watchdog.is_some() {
                notify::watchdog();
            }
            if last_status.elapsed() >= tick {
                notify::status(self.counters);
                last_status = Instant::now();
            }
            match self.step(tick) {
                Ok(Some(reason)) => return reason,
                Ok(None) => {}
                Err(reason) => return reason,
            }
        }
    }

    /// After the stop: read and hand over what was accepted, then return.
    fn drain(&mut self) {
        while !self.pending.is_empty() || !self.ready.is_empty() {
            if self.step(Duration::from_millis(100)).is_err() {
                return;
            }
        }
    }

    /// One round: wait for input (at most `tick`, or the nearest
    /// deadline), then accept, read and hand over. `Ok(Some)` is a stop
    /// signal, `Err` the workers being gone.
    fn step(&mut self, tick: Duration) -> Result<Option<&'static str>, &'static str> {
        self.flush()?;
        let now = Instant::now();
        let wait = self
            .pending
            .iter()
            .map(|p| p.deadline(self.opts).saturating_duration_since(now))
            .chain(std::iter::once(tick))
            .chain((!self.ready.is_empty()).then_some(Duration::from_millis(5)))
            .min()
            .unwrap_or(tick);
        let accepting = self.listener.is_some() && self.pending.len() + self.ready.len() < MAX_PENDING;
        let mut fds: Vec<PollFd> = Vec::with_capacity(self.pending.len() + 2);
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        if let (true, Some(l)) = (accepting, self.listener) {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let first_conn = fds.len();
        fds.extend(
            self.pending
                .iter()
                .map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = PollTimeout::try_from(wait.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX);
        let polled = poll(&mut fds, timeout).is_ok();
        let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let signal = polled && fds.first().is_some_and(readable);
        let listen = polled && accepting && fds.get(1).is_some_and(readable);
        let ready_conns: Vec<bool> = (0..self.pending.len())
            .map(|i| polled && fds.get(first_conn + i).is_some_and(readable))
            .collect();
        drop(fds);
        if signal {
            if let Ok(Some(info)) = self.signals.read_signal() {
                return Ok(Some(if info.ssi_signo == Signal::SIGINT as u32 {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }));
            }
        }
        // Read what arrived; finish what is complete or out of time.
        let now = Instant::now();
        let mut still = Vec::with_capacity(self.pending.len());
        for (p, ready) in std::mem::take(&mut self.pending).into_iter().zip(ready_conns) {
            let progress = if ready { p.read() } else { Progress::More(p) };
            match progress {
                Progress::More(p) if now >= p.deadline(self.opts) => self.ready.push_back(p.cut_off()),
                Progress::More(p) => still.push(p),
                Progress::Done(job) => self.ready.push_back(job),
            }
        }
        self.pending = still;
        if listen {
            self.accept();
        }
        self.flush()?;
        Ok(None)
    }

    /// Takes every pending connection (up to the cap).
    fn accept(&mut self) {
        let Some(listener) = self.listener else { return };
        while self.pending.len() + self.ready.len() < MAX_PENDING {
            match listener.accept() {
                Ok((stream, _)) => {
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    match Pending::new(stream) {
                        Ok(p) => self.pending.push(p),
                        Err(e) => tracing::warn!("cannot read a new connection: {e}"),
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

    /// Hands ready jobs to the workers while their queue has room.
    fn flush(&mut self) -> Result<(), &'static str> {
        while let Some(job) = self.ready.pop_front() {
            match self.tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.ready.push_front(job);
                    return Ok(());
                }
                Err(TrySendError::Disconnected(_)) => return Err("workers gone"),
            }
        }
        Ok(())
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, svc: &Service, counters: &Counters, opts: &ServeOptions) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let ok = conn::handle(job, svc, opts);
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
