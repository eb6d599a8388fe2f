//! `qubes-pci-admin serve`: the resident service behind qrexec socket
//! services. One connection is one call in qrexec's socket-service framing
//! (header, NUL, payload, EOF; then the reply and close), answered by the
//! same handler as exec mode.
//!
//! Threads, not an async runtime. Each of the bounded pool of workers
//! accepts connections itself and answers a request that arrives at once
//! (qrexec writes the whole call as it connects) in the same thread: no
//! hand-off on the common path. A connection whose request is not complete
//! within [`FAST_WAIT`] goes to the reading thread, which reads every such
//! connection at once (non-blocking, one `poll`), so a client that connects
//! and sends nothing holds a worker for at most that long: it is cut off at
//! the header deadline (qrexec writes the header at once) or, once the
//! header came, at the read deadline, and its complete request goes back to
//! the workers through a queue. At most `workers` calls run at a time. The
//! reading thread also takes SIGTERM/SIGINT from a signalfd and tells
//! systemd how things stand.

mod conn;
mod notify;

use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use conn::{Job, Pending, Progress};
use std::os::unix::net::UnixDatagram;
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
    /// Answer every call without looking at it, touching nothing: the
    /// transport's own floor, for benchmarks.
    pub echo: Option<Echo>,
}

/// What a daemon in echo mode answers.
#[derive(Clone, Debug)]
pub enum Echo {
    /// `0\0` and the call's payload.
    Payload,
    /// These bytes, whatever the call (a real reply captured before, so that
    /// the floor copies as many bytes as the call it is compared with).
    Fixed(std::sync::Arc<[u8]>),
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

/// How long a worker waits for the rest of a request it accepted before it
/// hands the connection to the reading thread.
const FAST_WAIT: Duration = Duration::from_millis(2);

/// Connections read by the reading thread at the same time; past this, the
/// oldest is cut off for each new one. Workers never stop accepting, so a
/// caller that sends its request at once is answered however many others
/// stall (they would otherwise hold every place until their deadline).
const MAX_PENDING: usize = 512;

/// A wake-up line between threads: a datagram per wake-up.
struct Bell {
    rx: UnixDatagram,
    tx: UnixDatagram,
}

impl Bell {
    fn new() -> std::io::Result<Bell> {
        let (rx, tx) = UnixDatagram::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Bell { rx, tx })
    }
    fn ring(&self) {
        let _ = self.tx.send(&[1]);
    }
    /// Takes one wake-up, if any.
    fn take(&self) {
        let _ = self.rx.recv(&mut [0u8; 1]);
    }
    /// Takes every wake-up.
    fn drain(&self) {
        let mut b = [0u8; 1];
        while self.rx.recv(&mut b).is_ok() {}
    }
}

/// What the threads share.
struct Shared {
    listener: UnixListener,
    counters: Arc<Counters>,
    opts: ServeOptions,
    /// Set at SIGTERM/SIGINT: no more accepting.
    stopping: AtomicBool,
    /// Rung once at the stop and never taken, so every worker sees it.
    stop_bell: Bell,
    /// Set when the reading thread has handed over its last job.
    reader_done: AtomicBool,
    /// Complete requests (or cut-off connections) from the reading thread.
    jobs: Mutex<VecDeque<Job>>,
    jobs_bell: Bell,
    /// Connections a worker could not read at once, for the reading thread.
    slow: Mutex<Vec<Pending>>,
    slow_bell: Bell,
    /// Connections the reading thread holds (and those on their way to it).
    pending: AtomicUsize,
}

fn bell() -> Result<Bell, ServeError> {
    Bell::new().map_err(sys("creating a wake-up socket pair"))
}

/// Runs until SIGTERM or SIGINT; then stops accepting, finishes the calls
/// already accepted and returns.
pub fn serve(svc: Service, opts: ServeOptions) -> Result<(), ServeError> {
    // Block the stop signals in every thread (workers inherit the mask) and
    // read them from a signalfd in the reading thread.
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
    let shared = Arc::new(Shared {
        listener,
        counters: counters.clone(),
        opts: opts.clone(),
        stopping: AtomicBool::new(false),
        stop_bell: bell()?,
        reader_done: AtomicBool::new(false),
        jobs: Mutex::new(VecDeque::new()),
        jobs_bell: bell()?,
        slow: Mutex::new(Vec::new()),
        slow_bell: bell()?,
        pending: AtomicUsize::new(0),
    });
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let shared = shared.clone();
            let svc = svc.clone();
            std::thread::spawn(move || worker(&shared, &svc))
        })
        .collect();

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    notify::ready(&counters);
    tracing::info!(workers, "serving admin.vm.device.pci.* calls");
    let mut reader = Reader {
        shared: &shared,
        signals: &signals,
        watchdog,
        pending: Vec::new(),
    };
    let stop_reason = reader.run();
    notify::stopping(&counters);
    tracing::info!(
        reason = stop_reason,
        "stopping: no new connections; finishing the calls in flight"
    );
    shared.stopping.store(true, Ordering::SeqCst);
    shared.stop_bell.ring();
    if let Some(p) = &made {
        let _ = std::fs::remove_file(p);
    }
    // Connections accepted before the stop are still read and answered.
    reader.drain();
    shared.reader_done.store(true, Ordering::SeqCst);
    shared.jobs_bell.ring();
    for h in handles {
        let _ = h.join();
    }
    tracing::info!(status = counters.status_line(), "stopped");
    Ok(())
}

/// The reading thread: slow connections, deadlines, signals, systemd.
struct Reader<'a> {
    shared: &'a Shared,
    signals: &'a SignalFd,
    watchdog: Option<Duration>,
    /// Connections still sending their request.
    pending: Vec<Pending>,
}

impl Reader<'_> {
    /// Until SIGTERM/SIGINT.
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
                notify::status(&self.shared.counters);
                last_status = Instant::now();
            }
            if let Some(reason) = self.step(tick) {
                return reason;
            }
        }
    }

    /// After the stop: read what was accepted, then return.
    fn drain(&mut self) {
        loop {
            self.take_slow();
            if self.pending.is_empty() && self.shared.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            let _ = self.step(Duration::from_millis(100));
        }
    }

    fn take_slow(&mut self) {
        self.shared.slow_bell.drain();
        if let Ok(mut slow) = self.shared.slow.lock() {
            self.pending.append(&mut slow);
        }
        let over = self.pending.len().saturating_sub(MAX_PENDING);
        if over > 0 {
            self.pending.sort_by_key(|p| p.started());
            let oldest: Vec<Pending> = self.pending.drain(..over).collect();
            for p in oldest {
                self.finish(p.evict());
            }
        }
    }

    fn finish(&self, job: Job) {
        if let Ok(mut jobs) = self.shared.jobs.lock() {
            jobs.push_back(job);
        }
        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        self.shared.jobs_bell.ring();
    }

    /// One round: wait for input (at most `tick`, or the nearest
    /// deadline), then read; `Some` is a stop signal.
    fn step(&mut self, tick: Duration) -> Option<&'static str> {
        self.take_slow();
        let now = Instant::now();
        let opts = &self.shared.opts;
        let wait = self
            .pending
            .iter()
            .map(|p| p.deadline(opts).saturating_duration_since(now))
            .chain(std::iter::once(tick))
            .min()
            .unwrap_or(tick);
        let mut fds: Vec<PollFd> = Vec::with_capacity(self.pending.len() + 2);
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.shared.slow_bell.rx.as_fd(), PollFlags::POLLIN));
        fds.extend(
            self.pending
                .iter()
                .map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = PollTimeout::try_from(wait.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX);
        let polled = poll(&mut fds, timeout).is_ok();
        let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let signal = polled && fds.first().is_some_and(readable);
        let ready_conns: Vec<bool> = (0..self.pending.len())
            .map(|i| polled && fds.get(2 + i).is_some_and(readable))
            .collect();
        drop(fds);
        // Read what arrived; finish what is complete or out of time.
        let now = Instant::now();
        let mut still = Vec::with_capacity(self.pending.len());
        for (p, ready) in std::mem::take(&mut self.pending).into_iter().zip(ready_conns) {
            let progress = if ready { p.read() } else { Progress::More(p) };
            match progress {
                Progress::More(p) if now >= p.deadline(opts) => self.finish(p.cut_off()),
                Progress::More(p) => still.push(p),
                Progress::Done(job) => self.finish(job),
            }
        }
        self.pending = still;
        if signal {
            if let Ok(Some(info)) = self.signals.read_signal() {
                return Some(if info.ssi_signo == Signal::SIGINT as u32 {
                    "SIGINT"
                } else {
                    "SIGTERM"
                });
            }
        }
        None
    }
}

/// Answers one job and counts it.
fn answer(job: Job, svc: &Service, shared: &Shared) {
    let counters = &shared.counters;
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let ok = conn::handle(job, svc, &shared.opts);
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    counters.calls.fetch_add(1, Ordering::Relaxed);
    if !ok {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A worker: answers queued jobs first, else accepts and answers a call
/// itself; returns once stopped with nothing left to answer.
fn worker(shared: &Shared, svc: &Service) {
    loop {
        let job = shared.jobs.lock().ok().and_then(|mut j| j.pop_front());
        if let Some(job) = job {
            answer(job, svc, shared);
            continue;
        }
        let stopping = shared.stopping.load(Ordering::SeqCst);
        if stopping && shared.reader_done.load(Ordering::SeqCst) {
            let empty = shared.jobs.lock().map(|j| j.is_empty()).unwrap_or(true);
            if empty {
                return;
            }
            continue;
        }
        let accepting = !stopping;
        // The stop bell wakes a worker waiting on the listener at the stop;
        // once stopping, only jobs matter.
        let mut fds = vec![PollFd::new(shared.jobs_bell.rx.as_fd(), PollFlags::POLLIN)];
        if !stopping {
            fds.push(PollFd::new(shared.stop_bell.rx.as_fd(), PollFlags::POLLIN));
        }
        if accepting {
            fds.push(PollFd::new(shared.listener.as_fd(), PollFlags::POLLIN));
        }
        let wait = if stopping { 100 } else { 1000 };
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let listen = accepting && fds.get(2).is_some_and(readable);
        if fds.first().is_some_and(readable) {
            shared.jobs_bell.take();
        }
        drop(fds);
        if listen {
            accept_one(shared, svc);
        }
    }
}

/// Accepts a connection, if one is waiting, and answers it here when its
/// request arrives within [`FAST_WAIT`]; otherwise hands it to the reading
/// thread.
fn accept_one(shared: &Shared, svc: &Service) {
    let stream = match shared.listener.accept() {
        Ok((s, _)) => s,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(e) => {
            tracing::warn!("accept failed: {e}");
            return;
        }
    };
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let pending = match Pending::new(stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot read a new connection: {e}");
            return;
        }
    };
    let until = Instant::now() + FAST_WAIT;
    let mut p = pending;
    loop {
        match p.read() {
            Progress::Done(job) => return answer(job, svc, shared),
            Progress::More(more) => p = more,
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds = [PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)];
        let ms = left.as_millis().clamp(1, 1000) as i32;
        if poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)).unwrap_or(0) == 0 {
            break;
        }
    }
    shared.pending.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut slow) = shared.slow.lock() {
        slow.push(p);
    }
    shared.slow_bell.ring();
}
