//! What dom0's kernel command line hides from dom0's drivers at boot, as
//! Qubes R4.3's dracut module (`90qubes-pciback/qubes-pciback.sh`) reads
//! it: `rd.qubes.hide_pci=` with comma-separated devices, each a PCI path
//! (`00_14.0`, `0001_00_02.0`, `00_1c.0-00_00.0`), an SBDF
//! (`0000:00:14.0`) or a BDF (`00:14.0`); every network controller (class
//! 0x02); every USB controller (class 0x0c03) with `rd.qubes.hide_all_usb`;
//! less what `rd.qubes.dom0_usb=` keeps in dom0.

use std::collections::BTreeSet;

use qubes_pci_rpc::{PciPath, Sbdf};

use super::Inventory;

/// The hiding options of one kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HideOptions {
    /// `rd.qubes.hide_pci=` entries, as written.
    pub hide_pci: Vec<String>,
    pub hide_all_usb: bool,
    /// `rd.qubes.dom0_usb=` entries, as written.
    pub dom0_usb: Vec<String>,
}

impl HideOptions {
    /// Parses `/proc/cmdline` (the last of a repeated option wins, as
    /// dracut's `getarg` does).
    pub fn parse(cmdline: &str) -> HideOptions {
        let mut out = HideOptions::default();
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect()
        };
        for arg in cmdline.split_whitespace() {
            let (key, value) = match arg.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (arg, None),
            };
            match key {
                "rd.qubes.hide_pci" => out.hide_pci = list(value.unwrap_or_default()),
                "rd.qubes.dom0_usb" => out.dom0_usb = list(value.unwrap_or_default()),
                // dracut's getargbool: present, or any value but 0/no/off.
                "rd.qubes.hide_all_usb" => out.hide_all_usb = !matches!(value, Some("0" | "no" | "off" | "false")),
                _ => {}
            }
        }
        out
    }

    /// The functions hidden, among the devices present. An entry that
    /// names no present device hides nothing.
    pub fn hidden(&self, inventory: &Inventory) -> BTreeSet<Sbdf> {
        let resolve = |e: &String| resolve(e, inventory);
        let kept: BTreeSet<Sbdf> = self.dom0_usb.iter().filter_map(resolve).collect();
        let auto = inventory.devices.iter().filter(|d| {
            d.class
                .is_some_and(|c| c >> 16 == 0x02 || (self.hide_all_usb && c >> 8 == 0x0c03))
        });
        auto.map(|d| d.sbdf)
            .chain(self.hide_pci.iter().filter_map(resolve))
            .filter(|s| !kept.contains(s))
            .collect()
    }

    /// The `rd.qubes.hide_pci=` entries that name no present device or
    /// hide a device dom0 keeps: for `hide-list --check`.
    pub fn explicit(&self, inventory: &Inventory) -> Vec<(String, Option<Sbdf>)> {
        self.hide_pci
            .iter()
            .map(|e| (e.clone(), resolve(e, inventory)))
            .collect()
    }
}

/// One entry: an SBDF, a BDF (segment 0000), or a PCI path resolved
/// through the bridges of the devices present; `None` when it names no
/// device present.
pub fn resolve(entry: &str, inventory: &Inventory) -> Option<Sbdf> {
    if entry.contains(':') {
        let sbdf = Sbdf::parse(entry).ok()?;
        return inventory.by_sbdf(&sbdf).map(|d| d.sbdf);
    }
    let path = PciPath::parse(entry).ok()?;
    inventory.by_port(&path).map(|d| d.sbdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_dracut_reads_them() {
        let o = HideOptions::parse(
            "BOOT_IMAGE=/vmlinuz rd.qubes.hide_pci=00:1f.6,0000:02:00.0 quiet rd.qubes.hide_pci=00_14.0,00_1c.0-00_00.0 \
             rd.qubes.hide_all_usb rd.qubes.dom0_usb=00:14.0",
        );
        assert_eq!(o.hide_pci, ["00_14.0", "00_1c.0-00_00.0"], "the last one wins");
        assert!(o.hide_all_usb);
        assert_eq!(o.dom0_usb, ["00:14.0"]);
        assert!(!HideOptions::parse("rd.qubes.hide_all_usb=0").hide_all_usb);
        assert!(HideOptions::parse("rd.qubes.hide_all_usb=1").hide_all_usb);
        assert_eq!(HideOptions::parse("ro quiet"), HideOptions::default());
    }
}
