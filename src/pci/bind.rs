//! Handing a device to pciback through sysfs: unbind it from its current
//! driver, make pciback accept its slot (`new_slot`), bind it. There is no
//! way back here: a device is never given back to a dom0 driver.
//!
//! Paths are built only from a validated [`Sbdf`] and fixed names.

use std::io::Write;
use std::path::{Path, PathBuf};

use qubes_pci_rpc::Sbdf;

use super::PciDevice;

/// The driver name of xen-pciback in sysfs.
pub const PCIBACK: &str = "pciback";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot write {value} to {path}: {source}. The device was not handed to pciback; check that xen-pciback \
     is loaded (`modprobe xen-pciback`) and that the service runs as root with /sys writable"
)]
pub struct BindError {
    pub path: PathBuf,
    pub value: String,
    pub source: std::io::Error,
}

fn write_attr(path: PathBuf, value: &str) -> Result<(), BindError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| BindError {
            path,
            value: value.to_owned(),
            source,
        })
}

/// What was done, one line per write.
pub fn bind_to_pciback(sysfs: &Path, dev: &PciDevice) -> Result<Vec<String>, BindError> {
    let sbdf: Sbdf = dev.sbdf;
    let name = sbdf.to_string();
    if dev.driver.as_deref() == Some(PCIBACK) {
        return Ok(vec![format!("{name} is already bound to {PCIBACK}")]);
    }
    let mut done = Vec::new();
    if let Some(driver) = &dev.driver {
        write_attr(sysfs.join("bus/pci/devices").join(&name).join("driver/unbind"), &name)?;
        done.push(format!("unbound {name} from {driver}"));
    }
    let pciback = sysfs.join("bus/pci/drivers").join(PCIBACK);
    write_attr(pciback.join("new_slot"), &name)?;
    write_attr(pciback.join("bind"), &name)?;
    done.push(format!("bound {name} to {PCIBACK}"));
    Ok(done)
}
