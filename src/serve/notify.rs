//! What the daemon tells systemd (`READY=1`, `STATUS=`, `STOPPING=1`,
//! `WATCHDOG=1`). Without `NOTIFY_SOCKET` these do nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use sd_notify::NotifyState;

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Counters shown in `STATUS=` and returned when the daemon stops.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Counters {
    pub fn status_line(&self) -> String {
        format!(
            "{} calls answered ({} errors), {} in flight",
            load(&self.calls),
            load(&self.errors),
            load(&self.in_flight)
        )
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn ready(c: &Counters) {
    let status = format!("ready; {}", c.status_line());
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn status(c: &Counters) {
    send(&[NotifyState::Status(&c.status_line())]);
}

pub fn stopping(c: &Counters) {
    let status = format!("stopping; {}", c.status_line());
    send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
