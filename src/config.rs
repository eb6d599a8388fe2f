//! The one settings struct: every setting is a flag and an environment
//! variable (exec mode has no flags, so it reads the variables alone).

use std::path::PathBuf;

/// Policy directories in qrexec's order: a file in an earlier directory
/// shadows the file of the same name in a later one.
pub const DEFAULT_POLICY_DIRS: [&str; 2] = ["/run/qubes/policy.d", "/etc/qubes/policy.d"];

/// Where dom0 keeps the qubesd socket, the source of system info on dom0.
pub const QUBESD_SOCKET: &str = "/var/run/qubesd.sock";

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Root of the sysfs tree to read PCI devices from.
    #[arg(long, env = "QUBES_PCI_ADMIN_SYSFS", default_value = "/sys", global = true)]
    pub sysfs: PathBuf,

    /// Directory holding the assignment store.
    #[arg(
        long,
        env = "QUBES_PCI_ADMIN_STATE_DIR",
        default_value = "/var/lib/qubes-pci-admin",
        global = true
    )]
    pub state_dir: PathBuf,

    /// qrexec policy directory; repeat for several, earlier ones shadow
    /// later ones by file name [default: /run/qubes/policy.d /etc/qubes/policy.d]
    #[arg(
        long = "policy-dir",
        env = "QUBES_PCI_ADMIN_POLICY_DIR",
        value_delimiter = ':',
        global = true
    )]
    pub policy_dirs: Vec<PathBuf>,

    /// System info JSON (qubesd's internal.GetSystemInfo); default: ask qubesd.
    #[arg(long, env = "QUBES_PCI_ADMIN_SYSTEM_INFO", global = true)]
    pub system_info: Option<PathBuf>,

    /// pci.ids database; default: /usr/share/hwdata/pci.ids, then
    /// /usr/share/misc/pci.ids, then the copy built into the binary.
    #[arg(long, env = "QUBES_PCI_ADMIN_PCI_IDS", global = true)]
    pub pci_ids: Option<PathBuf>,
}

impl Config {
    /// The policy directories in effect.
    pub fn policy_dirs(&self) -> Vec<PathBuf> {
        if self.policy_dirs.is_empty() {
            DEFAULT_POLICY_DIRS.iter().map(PathBuf::from).collect()
        } else {
            self.policy_dirs.clone()
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
