//! The one settings struct: every setting is a flag and an environment
//! variable (exec mode has no flags, so it reads the variables alone).

use std::path::PathBuf;

/// Policy directories in qrexec's order: a file in an earlier directory
/// shadows the file of the same name in a later one.
pub const DEFAULT_POLICY_DIRS: [&str; 2] = ["/run/qubes/policy.d", "/etc/qubes/policy.d"];

/// The variable naming the daemon's socket, and its default (the thin exec
/// entry reads them without the rest of this struct).
pub const DAEMON_SOCKET_ENV: &str = "QUBES_PCI_ADMIN_DAEMON_SOCKET";
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/qubes-pci-admin.sock";
/// The variable of `--qubesd-timeout-ms`, and its default.
pub const QUBESD_TIMEOUT_ENV: &str = "QUBES_PCI_ADMIN_QUBESD_TIMEOUT_MS";
pub const DEFAULT_QUBESD_TIMEOUT_MS: u64 = 20_000;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Root of the sysfs tree to read PCI devices from.
    #[arg(long, env = "QUBES_PCI_ADMIN_SYSFS", default_value = "/sys", global = true)]
    pub sysfs: PathBuf,

    /// Root of the procfs tree (dom0's mounts and swap, to know which
    /// devices dom0 itself uses).
    #[arg(long, env = "QUBES_PCI_ADMIN_PROCFS", default_value = "/proc", global = true)]
    pub procfs: PathBuf,

    /// qubesd's Admin API socket: every change is sent there, as dom0.
    #[arg(
        long,
        env = "QUBES_PCI_ADMIN_QUBESD_SOCKET",
        default_value = "/var/run/qubesd.sock",
        global = true
    )]
    pub qubesd_socket: PathBuf,

    /// qubesd's internal socket (internal.GetSystemInfo).
    #[arg(
        long,
        env = "QUBES_PCI_ADMIN_QUBESD_INTERNAL_SOCKET",
        default_value = "/var/run/qubesd.internal.sock",
        global = true
    )]
    pub qubesd_internal_socket: PathBuf,

    /// Milliseconds qubesd may take to answer one request.
    #[arg(
        long,
        env = QUBESD_TIMEOUT_ENV,
        default_value_t = DEFAULT_QUBESD_TIMEOUT_MS,
        global = true
    )]
    pub qubesd_timeout_ms: u64,

    /// Milliseconds a caller may take to send its whole request (exec mode,
    /// serve-connection, the daemon); then it gets a typed refusal.
    #[arg(
        long,
        env = "QUBES_PCI_ADMIN_READ_DEADLINE_MS",
        default_value_t = 5000,
        global = true
    )]
    pub read_deadline_ms: u64,

    /// qubesd's qubes.xml, read for Assigned and for the rules' facts.
    #[arg(
        long,
        env = "QUBES_PCI_ADMIN_QUBES_XML",
        default_value = "/var/lib/qubes/qubes.xml",
        global = true
    )]
    pub qubes_xml: PathBuf,

    /// qrexec policy directory; repeat for several, earlier ones shadow
    /// later ones by file name [default: /run/qubes/policy.d /etc/qubes/policy.d]
    #[arg(
        long = "policy-dir",
        env = "QUBES_PCI_ADMIN_POLICY_DIR",
        value_delimiter = ':',
        global = true
    )]
    pub policy_dirs: Vec<PathBuf>,

    /// System info JSON (the shape of qubesd's internal.GetSystemInfo) to
    /// use instead of asking qubesd: for tests and the demo.
    #[arg(long, env = "QUBES_PCI_ADMIN_SYSTEM_INFO", global = true)]
    pub system_info: Option<PathBuf>,

    /// The daemon's socket: exec mode hands each call to the daemon
    /// listening there, and answers it itself when nothing listens. `none`:
    /// never hand over.
    #[arg(
        long,
        env = DAEMON_SOCKET_ENV,
        default_value = DEFAULT_DAEMON_SOCKET,
        global = true
    )]
    pub daemon_socket: PathBuf,

    /// pci.ids database; default: /usr/share/hwdata/pci.ids, then
    /// /usr/share/misc/pci.ids, then the copy built into the binary.
    #[arg(long, env = "QUBES_PCI_ADMIN_PCI_IDS", global = true)]
    pub pci_ids: Option<PathBuf>,
}

impl Config {
    /// How long a caller may take to send its whole request.
    pub fn read_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.read_deadline_ms)
    }

    /// The policy directories in effect.
    pub fn policy_dirs(&self) -> Vec<PathBuf> {
        if self.policy_dirs.is_empty() {
            DEFAULT_POLICY_DIRS.iter().map(PathBuf::from).collect()
        } else {
            self.policy_dirs.clone()
        }
    }

    /// Where qubesd listens.
    pub fn qubesd(&self) -> crate::qubesd::Qubesd {
        crate::qubesd::Qubesd {
            admin: self.qubesd_socket.clone(),
            internal: self.qubesd_internal_socket.clone(),
            timeout: std::time::Duration::from_millis(self.qubesd_timeout_ms),
        }
    }

    /// The settings from the environment alone, with defaults (exec mode).
    pub fn from_env() -> Result<Config, clap::Error> {
        use clap::Parser;
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        struct EnvOnly {
            #[command(flatten)]
            config: Config,
        }
        EnvOnly::try_parse_from(std::iter::empty::<String>()).map(|e| e.config)
    }
}
