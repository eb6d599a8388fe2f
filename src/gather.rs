//! Reading facts from dom0 for [`crate::rules`]: the devices present at
//! the ports a decision concerns (with what dom0 itself uses them for), and
//! the option grants of the policy. Shared by the front door and the
//! qubesd extension's check, which differ only in where they learn about
//! qubes and assignments.

use std::path::Path;
use std::sync::Arc;

use qubes_pci_rpc::{options, PciOptions, PciPath, QubeName, Target};

use crate::error::ApiError;
use crate::pci::{dom0_use, Inventory};
use crate::policy::{self, Policy, System};
use crate::rules::{Present, OPTION_SERVICE};

/// The devices present at `ports`, each with what dom0 uses it for. One
/// port is read alone; several from one scan.
pub fn present(sysfs: &Path, procfs: &Path, ports: &[&PciPath]) -> Result<Vec<Present>, ApiError> {
    let devices = match ports {
        [] => return Ok(Vec::new()),
        [one] => Inventory::scan_port(sysfs, one)?.into_iter().collect(),
        many => {
            let inventory = Inventory::scan(sysfs)?;
            many.iter()
                .filter_map(|p| inventory.by_port(p).cloned())
                .collect::<Vec<_>>()
        }
    };
    with_dom0_uses(sysfs, procfs, devices)
}

/// `devices`, each with what dom0 uses it for.
pub fn with_dom0_uses(
    sysfs: &Path,
    procfs: &Path,
    devices: Vec<crate::pci::PciDevice>,
) -> Result<Vec<Present>, ApiError> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let picture = dom0_use::scan(sysfs, procfs);
    if !picture.unreadable.is_empty() {
        tracing::error!(
            why = picture.unreadable.join("; "),
            "what dom0's storage uses cannot be read: no device can be given to a qube until it can"
        );
    }
    Ok(devices
        .into_iter()
        .map(|device| Present {
            dom0_uses: picture.uses(&device.sbdf),
            device,
        })
        .collect())
}

/// What dom0's kernel command line (`<procfs>/cmdline`) hides at boot,
/// among the devices present; `None` when it cannot be read.
pub fn hidden(sysfs: &Path, procfs: &Path) -> Result<Option<crate::rules::facts::Hidden>, ApiError> {
    let Ok(cmdline) = std::fs::read_to_string(procfs.join("cmdline")) else {
        return Ok(None);
    };
    let inventory = Inventory::scan(sysfs)?;
    Ok(Some(crate::rules::facts::Hidden {
        sbdfs: crate::pci::hide::HideOptions::parse(&cmdline).hidden(&inventory),
    }))
}

/// The options among `wanted` that the policy lets `source` turn on for
/// `target` (`admin.vm.device.pci.Option+NAME`, resolved to dom0); all of
/// them for dom0. The policy is loaded only when a qube wants an option.
pub fn grants(
    policy: impl Fn() -> Result<Arc<Policy>, String>,
    system: &System,
    source: &QubeName,
    target: &Target,
    wanted: PciOptions,
) -> PciOptions {
    if source.is_dom0() {
        return PciOptions {
            no_strict_reset: true,
            permissive: true,
        };
    }
    let allowed = |on: bool, name: &str| {
        on && match policy::check_service(&policy, system, source, target, OPTION_SERVICE, name, false) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(%source, %target, option = name, "option not granted: {why}");
                false
            }
        }
    };
    PciOptions {
        no_strict_reset: allowed(wanted.no_strict_reset, options::NO_STRICT_RESET),
        permissive: allowed(wanted.permissive, options::PERMISSIVE),
    }
}
