//! Builds fake sysfs trees: `devices/pciSSSS:BB/...` directories with the
//! attribute files the service reads, and `bus/pci/devices/<sbdf>` links.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct FakeDev {
    pub sbdf: &'static str,
    /// The bridge this device sits behind (`None`: on a root bus).
    pub parent: Option<&'static str>,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<&'static str>,
    /// `Some` writes `reset_method` (and `reset`); `None` writes neither.
    pub reset_method: Option<&'static str>,
    /// For bridges: the decimal `secondary_bus_number`.
    pub secondary: Option<u8>,
}

impl FakeDev {
    pub fn new(sbdf: &'static str, vendor: u16, device: u16, class: u32) -> FakeDev {
        FakeDev {
            sbdf,
            parent: None,
            vendor,
            device,
            class,
            driver: None,
            reset_method: Some("flr bus"),
            secondary: None,
        }
    }
    pub fn behind(mut self, parent: &'static str) -> Self {
        self.parent = Some(parent);
        self
    }
    pub fn driver(mut self, d: &'static str) -> Self {
        self.driver = Some(d);
        self
    }
    pub fn reset(mut self, r: Option<&'static str>) -> Self {
        self.reset_method = r;
        self
    }
    pub fn bridge_to(mut self, secondary: u8) -> Self {
        self.secondary = Some(secondary);
        self
    }
}

pub struct FakeSysfs {
    pub dir: tempfile::TempDir,
    paths: HashMap<String, PathBuf>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, format!("{text}\n")).unwrap();
}

impl FakeSysfs {
    pub fn new(root_buses: &[&str]) -> FakeSysfs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bus/pci/devices")).unwrap();
        std::fs::create_dir_all(dir.path().join("bus/pci/drivers/pciback")).unwrap();
        for f in ["new_slot", "bind", "unbind"] {
            std::fs::write(dir.path().join("bus/pci/drivers/pciback").join(f), "").unwrap();
        }
        for b in root_buses {
            std::fs::create_dir_all(dir.path().join("devices").join(format!("pci{b}"))).unwrap();
        }
        FakeSysfs {
            dir,
            paths: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn add(&mut self, d: FakeDev) -> &mut Self {
        let rel = match d.parent {
            Some(p) => self.paths[p].join(d.sbdf),
            None => PathBuf::from("devices")
                .join(format!("pci{}", &d.sbdf[..7]))
                .join(d.sbdf),
        };
        let abs = self.root().join(&rel);
        std::fs::create_dir_all(&abs).unwrap();
        write(&abs.join("vendor"), &format!("0x{:04x}", d.vendor));
        write(&abs.join("device"), &format!("0x{:04x}", d.device));
        write(&abs.join("class"), &format!("0x{:06x}", d.class));
        write(&abs.join("subsystem_vendor"), &format!("0x{:04x}", d.vendor));
        write(&abs.join("subsystem_device"), "0x0001");
        write(&abs.join("revision"), "0x02");
        if let Some(r) = d.reset_method {
            write(&abs.join("reset_method"), r);
            write(&abs.join("reset"), "");
        }
        if let Some(s) = d.secondary {
            write(&abs.join("secondary_bus_number"), &s.to_string());
        }
        // The config header the attributes come from (as the kernel shows
        // it to a user that is not root: the first 64 bytes).
        let mut config = [0u8; 64];
        config[0..2].copy_from_slice(&d.vendor.to_le_bytes());
        config[2..4].copy_from_slice(&d.device.to_le_bytes());
        config[8] = 0x02;
        config[9..12].copy_from_slice(&d.class.to_le_bytes()[..3]);
        match d.secondary {
            Some(sec) => {
                config[0x0e] = 1;
                config[0x19] = sec;
            }
            None => {
                config[0x2c..0x2e].copy_from_slice(&d.vendor.to_le_bytes());
                config[0x2e..0x30].copy_from_slice(&1u16.to_le_bytes());
            }
        }
        std::fs::write(abs.join("config"), config).unwrap();
        if let Some(drv) = d.driver {
            let drv_dir = self.root().join("bus/pci/drivers").join(drv);
            std::fs::create_dir_all(&drv_dir).unwrap();
            if !drv_dir.join("unbind").exists() {
                std::fs::write(drv_dir.join("unbind"), "").unwrap();
            }
            let depth = rel.components().count();
            let up = "../".repeat(depth);
            std::os::unix::fs::symlink(format!("{up}bus/pci/drivers/{drv}"), abs.join("driver")).unwrap();
        }
        std::os::unix::fs::symlink(
            format!("../../../{}", rel.display()),
            self.root().join("bus/pci/devices").join(d.sbdf),
        )
        .unwrap();
        self.paths.insert(d.sbdf.to_owned(), rel);
        self
    }

    /// What the service last wrote to `bus/pci/drivers/<driver>/<attr>`.
    pub fn written(&self, driver: &str, attr: &str) -> String {
        std::fs::read_to_string(self.root().join("bus/pci/drivers").join(driver).join(attr)).unwrap()
    }

    /// Unplugs a device: its directory and its `bus/pci/devices` link go.
    pub fn remove(&mut self, sbdf: &str) {
        let rel = self.paths.remove(sbdf).unwrap();
        std::fs::remove_dir_all(self.root().join(rel)).unwrap();
        std::fs::remove_file(self.root().join("bus/pci/devices").join(sbdf)).unwrap();
    }

    /// A block device `name` (`MAJ:MIN`) below the PCI device `sbdf`, as
    /// `/sys/dev/block/MAJ:MIN` and `/sys/class/block/NAME` show it.
    pub fn add_block(&self, sbdf: &str, name: &str, devno: &str) {
        let dev = self.root().join(&self.paths[sbdf]).join("host0/block").join(name);
        std::fs::create_dir_all(&dev).unwrap();
        for dir in ["dev/block", "class/block"] {
            std::fs::create_dir_all(self.root().join(dir)).unwrap();
        }
        std::os::unix::fs::symlink(&dev, self.root().join("dev/block").join(devno)).unwrap();
        std::os::unix::fs::symlink(&dev, self.root().join("class/block").join(name)).unwrap();
    }

    /// A device-mapper device over block devices already added.
    pub fn add_dm(&self, name: &str, devno: &str, slaves: &[&str]) {
        let dev = self.root().join("devices/virtual/block").join(name);
        std::fs::create_dir_all(dev.join("slaves")).unwrap();
        for s in slaves {
            std::os::unix::fs::symlink(self.root().join("class/block").join(s), dev.join("slaves").join(s)).unwrap();
        }
        std::os::unix::fs::symlink(&dev, self.root().join("dev/block").join(devno)).unwrap();
        std::os::unix::fs::symlink(&dev, self.root().join("class/block").join(name)).unwrap();
    }

    /// An input device (keyboard) below the PCI device `sbdf`.
    pub fn add_input(&self, sbdf: &str, name: &str) {
        let dev = self.root().join(&self.paths[sbdf]).join("usb1/1-1/1-1:1.0").join(name);
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(self.root().join("class/input").join(name)).unwrap();
        std::os::unix::fs::symlink(&dev, self.root().join("class/input").join(name).join("device")).unwrap();
    }

    /// Marks `sbdf` as the console GPU.
    pub fn set_boot_vga(&self, sbdf: &str) {
        write(&self.root().join(&self.paths[sbdf]).join("boot_vga"), "1");
    }

    /// Makes an attribute unreadable (a directory where a file should be:
    /// permission bits do not stop root).
    pub fn break_attr(&self, sbdf: &str, attr: &str) {
        let p = self.root().join(&self.paths[sbdf]).join(attr);
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir(&p).unwrap();
    }

    /// A symlink at `at` (under the root) to `target` (under the root),
    /// relative, as the kernel makes them.
    fn link(&self, at: &Path, target: &Path) {
        let up = at.parent().unwrap().components().count();
        let rel = PathBuf::from("../".repeat(up)).join(target);
        std::fs::create_dir_all(self.root().join(at).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(rel, self.root().join(at)).unwrap();
    }

    /// Where a block device added here lives, under the root.
    fn block_dir(&self, name: &str) -> PathBuf {
        let root = std::fs::canonicalize(self.root()).unwrap();
        std::fs::canonicalize(self.root().join("class/block").join(name))
            .unwrap()
            .strip_prefix(&root)
            .unwrap()
            .to_owned()
    }

    /// Registers the block device at `rel` as `class/block/NAME` and
    /// `dev/block/MAJ:MIN`, with its `dev`, `holders/` and `slaves/`.
    fn block_at(&self, rel: &Path, devno: &str) {
        let abs = self.root().join(rel);
        std::fs::create_dir_all(abs.join("holders")).unwrap();
        std::fs::create_dir_all(abs.join("slaves")).unwrap();
        write(&abs.join("dev"), devno);
        let name = rel.file_name().unwrap();
        self.link(&Path::new("class/block").join(name), rel);
        self.link(&Path::new("dev/block").join(devno), rel);
    }

    /// A whole disk `name` (`MAJ:MIN`) of the PCI function `sbdf`, where
    /// the kernel puts it: `nvme/nvmeX/nvmeXnY` for an NVMe namespace,
    /// `ata1/host0/target0:0:0/0:0:0:0/block/sdX` for a SATA disk.
    pub fn add_disk(&self, sbdf: &str, name: &str, devno: &str) {
        let under = &self.paths[sbdf];
        let rel = match name.strip_prefix("nvme") {
            Some(rest) => {
                let ctrl = format!("nvme{}", rest.split('n').next().unwrap());
                under.join("nvme").join(ctrl).join(name)
            }
            None => under.join("ata1/host0/target0:0:0/0:0:0:0/block").join(name),
        };
        self.block_at(&rel, devno);
    }

    /// A partition `name` of the disk `disk`.
    pub fn add_partition(&self, disk: &str, name: &str, devno: &str) {
        let rel = self.block_dir(disk).join(name);
        self.block_at(&rel, devno);
        write(&self.root().join(&rel).join("partition"), "1");
    }

    /// A virtual block device (`dm-N` with its device-mapper name, or an md
    /// array) over `slaves`, each of which gets it in its `holders/`.
    fn add_virtual(&self, name: &str, devno: &str, slaves: &[&str]) -> PathBuf {
        let rel = PathBuf::from("devices/virtual/block").join(name);
        self.block_at(&rel, devno);
        for s in slaves {
            let below = self.block_dir(s);
            self.link(&rel.join("slaves").join(s), &below);
            self.link(&below.join("holders").join(name), &rel);
        }
        rel
    }

    /// A device-mapper device `name` (`dm-N`) called `dm_name`
    /// (`/dev/mapper/DM_NAME`) over `slaves`.
    pub fn add_dm_device(&self, name: &str, devno: &str, dm_name: &str, slaves: &[&str]) {
        let rel = self.add_virtual(name, devno, slaves);
        std::fs::create_dir_all(self.root().join(&rel).join("dm")).unwrap();
        write(&self.root().join(&rel).join("dm/name"), dm_name);
    }

    /// An assembled md array `name` over `members`.
    pub fn add_md(&self, name: &str, devno: &str, members: &[&str]) {
        let rel = self.add_virtual(name, devno, members);
        std::fs::create_dir_all(self.root().join(&rel).join("md")).unwrap();
        write(&self.root().join(&rel).join("md/array_state"), "clean");
    }

    /// A mounted btrfs filesystem `fsid` on the block devices `devices`
    /// (`/sys/fs/btrfs/FSID/devices/NAME`).
    pub fn add_btrfs(&self, fsid: &str, devices: &[&str]) {
        let base = PathBuf::from("fs/btrfs").join(fsid);
        std::fs::create_dir_all(self.root().join("fs/btrfs/features")).unwrap();
        for d in devices {
            let target = self.block_dir(d);
            self.link(&base.join("devices").join(d), &target);
        }
    }

    /// The reference tree used by the golden tests.
    pub fn standard() -> FakeSysfs {
        let mut s = FakeSysfs::new(&["0000:00", "0001:00"]);
        s.add(FakeDev::new("0000:00:00.0", 0x8086, 0x0d04, 0x060000).reset(None))
            .add(FakeDev::new("0000:00:14.0", 0x8086, 0x8cb1, 0x0c0330).driver("xhci_hcd"))
            .add(FakeDev::new("0000:00:14.2", 0x8086, 0x8cb2, 0x118000).reset(Some("flr")))
            .add(
                FakeDev::new("0000:00:1c.0", 0x8086, 0x8c10, 0x060400)
                    .bridge_to(2)
                    .driver("pcieport"),
            )
            .add(
                FakeDev::new("0000:02:00.0", 0x8086, 0x08b1, 0x028000)
                    .behind("0000:00:1c.0")
                    .driver("iwlwifi"),
            )
            .add(
                FakeDev::new("0000:00:1f.6", 0x8086, 0x15a3, 0x020000)
                    .reset(None)
                    .driver("e1000e"),
            )
            .add(FakeDev::new("0000:00:1f.3", 0x8086, 0x9ca0, 0x040300))
            .add(FakeDev::new("0001:00:02.0", 0x144d, 0xa808, 0x010802).driver("nvme"));
        // No config header to read: the attributes are read instead, and
        // its class is unreadable too.
        s.break_attr("0000:00:1f.3", "config");
        s.break_attr("0000:00:1f.3", "class");
        s
    }

    /// Upstream's bridge-chain fixture: c0:03.5 -> c5:00.0 -> c6:00.0.
    pub fn upstream_chain() -> FakeSysfs {
        let mut s = FakeSysfs::new(&["0000:00", "0000:c0"]);
        s.add(FakeDev::new("0000:00:08.1", 0x1022, 0x1635, 0x060400).bridge_to(2))
            .add(FakeDev::new("0000:02:00.0", 0x1002, 0x1636, 0x030000).behind("0000:00:08.1"))
            .add(FakeDev::new("0000:02:00.2", 0x1022, 0x15df, 0x108000).behind("0000:00:08.1"))
            .add(FakeDev::new("0000:c0:03.5", 0x1022, 0x1483, 0x060400).bridge_to(197))
            .add(
                FakeDev::new("0000:c5:00.0", 0x1022, 0x1484, 0x060400)
                    .behind("0000:c0:03.5")
                    .bridge_to(198),
            )
            .add(FakeDev::new("0000:c6:00.0", 0x10de, 0x1234, 0x030000).behind("0000:c5:00.0"));
        s
    }

    /// `n` endpoint devices spread over root-bus slots and bridges.
    pub fn many(n: usize) -> FakeSysfs {
        let mut s = FakeSysfs::new(&["0000:00"]);
        let names: Vec<&'static str> = (0..n)
            .map(|i| {
                let bus = 1 + i / 32;
                let dev = i % 32;
                &*Box::leak(format!("0000:{bus:02x}:{dev:02x}.0").into_boxed_str())
            })
            .collect();
        let bridges: Vec<&'static str> = (0..n.div_ceil(32))
            .map(|b| &*Box::leak(format!("0000:00:{b:02x}.0").into_boxed_str()))
            .collect();
        for (b, name) in bridges.iter().enumerate() {
            s.add(FakeDev::new(name, 0x8086, 0x8c10, 0x060400).bridge_to((b + 1) as u8));
        }
        for (i, name) in names.iter().enumerate() {
            s.add(
                FakeDev::new(name, 0x8086, 0x1500 + i as u16, 0x020000)
                    .behind(bridges[i / 32])
                    .driver("e1000e"),
            );
        }
        s
    }
}
