#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The sysfs inventory through the library API, on fake trees.

mod common;

use common::FakeSysfs;
use qubes_pci_admin::pci::{Inventory, Reset};
use qubes_pci_rpc::{PciPath, Sbdf};

fn port_of(inv: &Inventory, sbdf: &str) -> String {
    inv.by_sbdf(&Sbdf::parse(sbdf).unwrap()).unwrap().port.to_string()
}

#[test]
fn ports_follow_upstream_paths() {
    let s = FakeSysfs::upstream_chain();
    let inv = Inventory::scan(s.root()).unwrap();
    assert_eq!(port_of(&inv, "0000:00:08.1"), "00_08.1");
    assert_eq!(port_of(&inv, "0000:02:00.0"), "00_08.1-00_00.0");
    assert_eq!(port_of(&inv, "0000:02:00.2"), "00_08.1-00_00.2");
    assert_eq!(port_of(&inv, "0000:c5:00.0"), "c0_03.5-00_00.0");
    assert_eq!(port_of(&inv, "0000:c6:00.0"), "c0_03.5-00_00.0-00_00.0");
    // Reverse lookup: from the path back to the address.
    let p = PciPath::parse("c0_03.5-00_00.0-00_00.0").unwrap();
    assert_eq!(inv.by_port(&p).unwrap().sbdf.to_string(), "0000:c6:00.0");
    assert!(inv
        .by_port(&PciPath::parse("c0_03.7-00_00.0-00_00.0").unwrap())
        .is_none());
}

#[test]
fn attributes_segments_and_problems() {
    let s = FakeSysfs::standard();
    let inv = Inventory::scan(s.root()).unwrap();
    assert_eq!(inv.devices.len(), 8);
    assert_eq!(port_of(&inv, "0001:00:02.0"), "0001_00_02.0");
    assert_eq!(port_of(&inv, "0000:02:00.0"), "00_1c.0-00_00.0");
    let usb = inv.by_sbdf(&Sbdf::parse("0000:00:14.0").unwrap()).unwrap();
    assert_eq!(
        (usb.vendor, usb.device, usb.class),
        (Some(0x8086), Some(0x8cb1), Some(0x0c0330))
    );
    assert_eq!(usb.driver.as_deref(), Some("xhci_hcd"));
    assert_eq!(usb.reset, Reset::Methods(vec!["flr".into(), "bus".into()]));
    assert_eq!(usb.subsystem, Some((0x8086, 0x0001)));
    assert_eq!(usb.revision, Some(0x02));
    let siblings: Vec<String> = inv.siblings(usb).map(|d| d.sbdf.to_string()).collect();
    assert_eq!(siblings, ["0000:00:14.2"]);
    let nic = inv.by_sbdf(&Sbdf::parse("0000:00:1f.6").unwrap()).unwrap();
    assert_eq!(nic.reset, Reset::None);
    let host = inv.by_sbdf(&Sbdf::parse("0000:00:00.0").unwrap()).unwrap();
    assert!(host.is_bridge());
    let audio = inv.by_sbdf(&Sbdf::parse("0000:00:1f.3").unwrap()).unwrap();
    assert_eq!(audio.class, None);
    assert_eq!(audio.problems.len(), 1, "{:?}", audio.problems);
    assert!(audio.problems[0].starts_with("class:"));
}

#[test]
fn missing_tree_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Inventory::scan(dir.path()).unwrap_err();
    assert!(err.to_string().contains("--sysfs"), "{err}");
}

#[test]
fn bridge_without_secondary_bus_skips_only_its_children() {
    let mut s = FakeSysfs::new(&["0000:00"]);
    s.add(common::FakeDev::new("0000:00:1c.0", 0x8086, 0x8c10, 0x060400))
        .add(common::FakeDev::new("0000:02:00.0", 0x8086, 0x08b1, 0x028000).behind("0000:00:1c.0"));
    let inv = Inventory::scan(s.root()).unwrap();
    let found: Vec<String> = inv.devices.iter().map(|d| d.sbdf.to_string()).collect();
    assert_eq!(found, ["0000:00:1c.0"]);
}

/// Reads this machine's real /sys; skipped where it has no PCI bus.
#[test]
fn real_sysfs_when_present() {
    let root = std::path::Path::new("/sys");
    if !root.join("bus/pci/devices").is_dir() {
        eprintln!("skipped: no /sys/bus/pci here");
        return;
    }
    let inv = Inventory::scan(root).unwrap();
    let listed = std::fs::read_dir("/sys/bus/pci/devices").unwrap().count();
    assert!(inv.devices.len() <= listed);
    for d in &inv.devices {
        assert_eq!(PciPath::parse(&d.port.to_string()).unwrap(), d.port);
    }
}

#[test]
fn one_port_lookup_agrees_with_the_full_scan() {
    for s in [FakeSysfs::standard(), FakeSysfs::upstream_chain(), FakeSysfs::many(40)] {
        let inv = Inventory::scan(s.root()).unwrap();
        assert!(!inv.devices.is_empty());
        for d in &inv.devices {
            let one = Inventory::scan_port(s.root(), &d.port).unwrap().unwrap();
            assert_eq!(one.sbdf, d.sbdf);
            assert_eq!(one.device_id(), d.device_id());
            assert_eq!(one.driver, d.driver);
        }
    }
    let s = FakeSysfs::upstream_chain();
    for absent in [
        "00_08.1-00_00.1",
        "c0_03.5-00_00.0-00_01.0",
        "00_1f.0",
        "01_00.0",
        "0001_00_08.1",
    ] {
        let p = PciPath::parse(absent).unwrap();
        assert!(Inventory::scan_port(s.root(), &p).unwrap().is_none(), "{absent}");
    }
}

/// The ids, class, revision and subsystem come from one read of the config
/// header; without it the attribute files give the same devices.
#[test]
fn config_header_and_attribute_files_give_the_same_devices() {
    for s in [FakeSysfs::upstream_chain(), FakeSysfs::many(40), FakeSysfs::standard()] {
        let with_config = Inventory::scan(s.root()).unwrap();
        let mut removed = 0;
        for entry in std::fs::read_dir(s.root().join("bus/pci/devices")).unwrap() {
            let dir = std::fs::canonicalize(entry.unwrap().path()).unwrap();
            if std::fs::remove_file(dir.join("config")).is_ok() {
                removed += 1;
            }
        }
        assert!(removed > 0);
        let without = Inventory::scan(s.root()).unwrap();
        assert_eq!(format!("{:?}", with_config.devices), format!("{:?}", without.devices));
    }
    // And it is the header that is read when there is one.
    let s = FakeSysfs::upstream_chain();
    let dir = std::fs::canonicalize(s.root().join("bus/pci/devices/0000:02:00.0")).unwrap();
    let mut config = std::fs::read(dir.join("config")).unwrap();
    config[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
    std::fs::write(dir.join("config"), &config).unwrap();
    let inv = Inventory::scan(s.root()).unwrap();
    let d = inv
        .devices
        .iter()
        .find(|d| d.sbdf.to_string() == "0000:02:00.0")
        .unwrap();
    assert_eq!(d.vendor, Some(0x1234));
}
