//! Where the front door's facts come from: the settings, qubesd, and (for
//! the daemon) what is kept between calls until a watch says it changed
//! (see [`crate::cache`]): the policy, qubes.xml, the system info, pci.ids
//! and dom0's devices. Sources made for one call keep nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{available, Rendered};
use crate::cache::{Kept, Uevents};
use crate::error::ApiError;
use crate::pci::{Inventory, PciNames};
use crate::policy::Policy;
use crate::qubes_xml::QubesXml;
use crate::qubesd::Qubesd;
use crate::sysinfo::SystemInfo;
use crate::Config;

/// The settings, qubesd, and what the daemon keeps.
#[derive(Clone)]
pub struct Sources {
    pub config: Config,
    qubesd: Qubesd,
    kept: Option<Arc<KeptValues>>,
}

/// What the daemon keeps.
#[derive(Default)]
struct KeptValues {
    policy: Kept<Policy>,
    system: Kept<SystemInfo>,
    xml: Kept<QubesXml>,
    names: Kept<PciNames>,
    /// `None` when nothing would say a device changed (the real `/sys`
    /// without a uevent socket): then devices are read on every call.
    devices: Option<(Kept<Inventory>, Option<Uevents>)>,
    /// The whole `Available` answer, for the devices and names it was
    /// rendered from (the very values kept, compared by identity).
    available: Mutex<Option<RenderedFrom>>,
}

/// A rendered `Available` and the kept values it was rendered from.
type RenderedFrom = (Arc<Inventory>, Arc<PciNames>, Arc<Rendered>);

/// Loads through `kept` when there is one, else directly.
fn through<T, E>(
    kept: Option<&Kept<T>>,
    paths: impl Fn(Option<&T>) -> Vec<PathBuf>,
    also_stale: impl FnOnce() -> bool,
    load: impl Fn() -> Result<T, E>,
) -> Result<Arc<T>, E> {
    match kept {
        Some(k) => k.get(paths, also_stale, load),
        None => load().map(Arc::new),
    }
}

impl Sources {
    /// Sources for one call (exec mode, the CLI): read everything anew.
    pub fn new(config: Config) -> Sources {
        Sources {
            qubesd: config.qubesd(),
            config,
            kept: None,
        }
    }

    /// Sources for the daemon: keep what they read until it changes.
    /// Device events come from the kernel for the real `/sys`, from
    /// `uevents` when given (a test tree), and otherwise only from inotify
    /// (a test tree changes only through the filesystem).
    pub fn resident(config: Config, uevents: Option<Uevents>) -> Sources {
        let real_sys = config.sysfs == Path::new("/sys");
        let uevents = match uevents {
            Some(u) => Some(u),
            None if real_sys => {
                match crate::cache::kernel_uevents_reach(&config.procfs) {
                    Err(why) => {
                        tracing::warn!("the kernel's device events do not reach this daemon ({why}); devices are read on every call");
                        None
                    }
                    Ok(()) => match Uevents::kernel() {
                        Ok(u) => {
                            tracing::info!("dom0's devices are kept until the kernel's device events say they changed");
                            Some(u)
                        }
                        Err(e) => {
                            tracing::warn!(
                                "cannot subscribe to the kernel's device events ({e}); devices are read on every call"
                            );
                            None
                        }
                    },
                }
            }
            None => None,
        };
        let devices = match (real_sys, uevents) {
            (true, None) => None,
            (_, u) => Some((Kept::default(), u)),
        };
        Sources {
            qubesd: config.qubesd(),
            config,
            kept: Some(Arc::new(KeptValues {
                devices,
                ..KeptValues::default()
            })),
        }
    }

    pub fn qubesd(&self) -> &Qubesd {
        &self.qubesd
    }

    /// Whether the daemon keeps dom0's devices between calls (told of
    /// changes by the kernel's device events, a test's socket, or, for a
    /// test tree, inotify alone) rather than reading them on every call.
    pub fn keeps_devices(&self) -> bool {
        self.kept.as_deref().is_some_and(|k| k.devices.is_some())
    }

    /// qubesd's qubes.xml as qubesd holds it (R4.2's BDF port ids
    /// converted), parsed again only when the file changed.
    pub fn qubes_xml(&self) -> Result<Arc<QubesXml>, ApiError> {
        let path = &self.config.qubes_xml;
        let loaded = through(
            self.kept.as_deref().map(|k| &k.xml),
            |_| vec![path.clone()],
            || false,
            || QubesXml::load(path),
        )
        .map_err(|detail| {
                ApiError::dom0(
                    "dom0's record of PCI assignments (qubesd's qubes.xml) cannot be read; nothing was changed by this call. A dom0 administrator can find the cause in the journal",
                    detail,
                )
            })?;
        Ok(loaded.as_qubesd_loads(&self.config.sysfs))
    }

    /// dom0's PCI devices. The daemon keeps them until a device event
    /// (added, removed, bound, unbound) or a write under a device's
    /// directory says otherwise.
    pub fn inventory(&self) -> Result<Arc<Inventory>, ApiError> {
        let root = &self.config.sysfs;
        let devices = self.kept.as_deref().and_then(|k| k.devices.as_ref());
        let paths = |inv: Option<&Inventory>| {
            let list = root.join("bus/pci/devices");
            let mut p = vec![list.clone(), root.join("devices")];
            p.extend(
                inv.into_iter()
                    .flat_map(|i| &i.devices)
                    .map(|d| list.join(d.sbdf.to_string())),
            );
            p
        };
        let uevents_say = || devices.and_then(|(_, u)| u.as_ref()).is_some_and(Uevents::changed);
        Ok(through(devices.map(|(k, _)| k), paths, uevents_say, || {
            Inventory::scan(root)
        })?)
    }

    /// `Available` for every device, rendered once per kept inventory and
    /// pci.ids.
    pub fn available_rendered(&self) -> Result<Arc<Rendered>, ApiError> {
        let inventory = self.inventory()?;
        let names = self.pci_names_for(&inventory);
        let render = || -> Result<Arc<Rendered>, ApiError> {
            Ok(Arc::new(Rendered::new(available::device_infos(
                &inventory, &names, None,
            ))?))
        };
        let Some(kept) = self.kept.as_deref() else {
            return render();
        };
        let Ok(mut memo) = kept.available.lock() else {
            return render();
        };
        if let Some((i, n, r)) = memo.as_ref() {
            if Arc::ptr_eq(i, &inventory) && Arc::ptr_eq(n, &names) {
                return Ok(r.clone());
            }
        }
        let r = render()?;
        *memo = Some((inventory.clone(), names.clone(), r.clone()));
        Ok(r)
    }

    /// pci.ids, indexed again only when the file changed.
    /// The names for `inventory`'s devices: the kept index in the daemon;
    /// in a process that answers once, only what names these devices
    /// (see [`PciNames::load_for`]).
    pub fn pci_names_for(&self, inventory: &Inventory) -> Arc<PciNames> {
        if self.kept.is_some() {
            return self.pci_names();
        }
        let vendors = inventory.devices.iter().filter_map(|d| d.vendor).collect();
        Arc::new(PciNames::load_for(self.config.pci_ids.as_deref(), &vendors))
    }

    pub fn pci_names(&self) -> Arc<PciNames> {
        let explicit = self.config.pci_ids.as_deref();
        let loaded: Result<_, std::convert::Infallible> = through(
            self.kept.as_deref().map(|k| &k.names),
            |_| PciNames::candidates(explicit),
            || false,
            || Ok(PciNames::load(explicit)),
        );
        match loaded {
            Ok(n) => n,
            Err(never) => match never {},
        }
    }

    /// The policy, parsed again only when a file under the policy
    /// directories (or one they include) changed.
    pub fn policy(&self) -> Result<Arc<Policy>, String> {
        let dirs = self.config.policy_dirs();
        through(
            self.kept.as_deref().map(|k| &k.policy),
            |p| {
                let mut paths = dirs.clone();
                paths.extend(p.into_iter().flat_map(|p| p.files.iter().cloned()));
                paths
            },
            || false,
            || Policy::load_dirs(&dirs).map_err(|e| e.to_string()),
        )
    }

    /// The system info: from the configured file (kept while it does not
    /// change), or asked from qubesd (`internal.GetSystemInfo`) on every call.
    pub fn system_info(&self) -> Result<Arc<SystemInfo>, ApiError> {
        match &self.config.system_info {
            Some(path) => through(
                self.kept.as_deref().map(|k| &k.system),
                |_| vec![path.clone()],
                || false,
                || SystemInfo::load_file(path),
            )
            .map_err(|e| {
                    ApiError::dom0(
                        "the system info given to qubes-pci-admin cannot be read; a dom0 administrator can find the cause in the journal",
                        e.to_string(),
                    )
                }),
            None => Ok(Arc::new(self.qubesd.system_info()?)),
        }
    }
}
