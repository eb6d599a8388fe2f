//! Logs through `tracing`: to journald when its socket exists, otherwise to
//! stderr. `QUBES_PCI_ADMIN_LOG` sets the filter (default `info`).

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// For the administrator's commands (`list`, `policy`, `preflight`, …):
/// the journal gets warnings, the terminal only what the command prints
/// (a message is never printed twice) unless `QUBES_PCI_ADMIN_LOG` asks.
pub fn init_cli() {
    let journald = Path::new(JOURNALD_SOCKET).exists();
    if journald || std::env::var_os("QUBES_PCI_ADMIN_LOG").is_some() {
        init("warn");
    }
}

pub fn init(default_level: &str) {
    // Nothing to set up when logging is off.
    if std::env::var_os("QUBES_PCI_ADMIN_LOG").is_some_and(|v| v == "off") {
        return;
    }
    let filter = EnvFilter::try_from_env("QUBES_PCI_ADMIN_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let journald = Path::new(JOURNALD_SOCKET)
        .exists()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|l| l.with_syslog_identifier("qubes-pci-admin".to_owned()));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match journald {
        Some(j) => registry.with(j).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
    // A second init (in tests) keeps the first subscriber.
    drop(result);
}
