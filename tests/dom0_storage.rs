#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! dom0's own storage, as the kernel shows it, stays in dom0: one world per
//! storage layout (sysfs in the kernel's layout: `class/block`,
//! `dev/block`, `nvme/nvmeX/nvmeXnY/nvmeXnYpZ`, `devices/virtual/block/dm-N`
//! with `slaves/`, `holders/` and `dm/name`, md arrays, `fs/btrfs`), each
//! with a control disk dom0 does not use, which a qube may still have.

mod common;

use common::{body_of, error_of, FakeDev, FakeSysfs, TestEnv};

/// dom0's first NVMe disk, its second, a SATA controller, and a third NVMe
/// disk nothing of dom0's is on (the control).
const NVME0: &str = "0000:00:1d.0";
const NVME1: &str = "0000:00:1e.0";
const SATA: &str = "0000:00:17.0";
const CONTROL: &str = "0000:00:1b.0";

fn world() -> FakeSysfs {
    let mut s = FakeSysfs::new(&["0000:00"]);
    s.add(FakeDev::new(NVME0, 0x144d, 0xa808, 0x010802).driver("nvme"))
        .add(FakeDev::new(NVME1, 0x144d, 0xa809, 0x010802).driver("nvme"))
        .add(FakeDev::new(SATA, 0x8086, 0xa352, 0x010601).driver("ahci"))
        .add(FakeDev::new(CONTROL, 0x1987, 0x5012, 0x010802).driver("nvme"));
    s.add_disk(NVME0, "nvme0n1", "259:0");
    s.add_partition("nvme0n1", "nvme0n1p1", "259:1");
    s.add_partition("nvme0n1", "nvme0n1p2", "259:2");
    s.add_partition("nvme0n1", "nvme0n1p3", "259:3");
    s.add_disk(NVME1, "nvme1n1", "259:4");
    s.add_partition("nvme1n1", "nvme1n1p1", "259:5");
    s.add_partition("nvme1n1", "nvme1n1p2", "259:6");
    s.add_partition("nvme1n1", "nvme1n1p3", "259:7");
    s.add_disk(SATA, "sda", "8:0");
    s.add_partition("sda", "sda1", "8:1");
    s.add_disk(CONTROL, "nvme2n1", "259:8");
    s.add_partition("nvme2n1", "nvme2n1p1", "259:9");
    s
}

fn env(sys: FakeSysfs) -> TestEnv {
    let env = TestEnv::new(sys);
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign * mgmt @tag:created-by-mgmt allow target=dom0\n",
    );
    env
}

fn port(sbdf: &str) -> String {
    format!("dom0+{}", &sbdf[5..].replace(':', "_"))
}

/// A qube's Assign of each of `used` is refused, naming `why`, and nothing
/// is recorded; the control disk is assigned.
fn assert_dom0_keeps(env: &TestEnv, used: &[&str], why: &str) {
    for sbdf in used {
        let (kind, msg) = error_of(&env.call(
            "mgmt",
            "work",
            &format!("admin.vm.device.pci.Assign+{}", port(sbdf)),
            b"mode='required'",
        ));
        assert_eq!(kind, "QubesValueError", "{sbdf}: {msg}");
        assert!(
            msg.contains("dom0 itself uses it") && msg.contains(why),
            "{sbdf}: {msg}"
        );
        assert!(
            !msg.contains("nvme0n1") && !msg.contains("/dev/"),
            "no dom0 internals: {msg}"
        );
    }
    assert!(env.recorded().is_empty(), "nothing recorded");
    body_of(&env.call(
        "mgmt",
        "work",
        &format!("admin.vm.device.pci.Assign+{}", port(CONTROL)),
        b"mode='required'",
    ));
    assert_eq!(env.recorded().len(), 1, "the control disk is assigned");
    // `list` says why, for each.
    let out = env.cli(&["list", "--json"], b"");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for sbdf in used {
        let row = common::device_at(&rows, &port(sbdf)[5..]);
        let reasons = row["used_by_dom0"].to_string();
        assert!(reasons.contains(why), "{sbdf}: {reasons}");
    }
    let control = common::device_at(&rows, &port(CONTROL)[5..]);
    assert_eq!(control["used_by_dom0"], serde_json::json!([]), "{control}");
}

/// The Qubes installer's btrfs layout: `/` is btrfs on LUKS on the first
/// NVMe disk, shown in mountinfo with an anonymous device number (`0:NN`)
/// and the source `/dev/mapper/luks-…`; a second btrfs straight on a
/// partition of the second disk (no stack above it) is found through
/// `/sys/fs/btrfs/FSID/devices`. /boot is on the SATA disk.
#[test]
fn btrfs_root_on_luks_on_nvme() {
    let sys = world();
    sys.add_dm_device("dm-0", "253:0", "luks-0f1e2d3c", &["nvme0n1p2"]);
    sys.add_btrfs("5b2a1c3d-0000-4000-8000-00000000aaaa", &["dm-0"]);
    sys.add_btrfs("6c3b2d4e-0000-4000-8000-00000000bbbb", &["nvme1n1p1"]);
    let env = env(sys);
    let mut mounts = common::VIRTUAL_MOUNTS.to_vec();
    mounts.extend([
        ("0:31", "/", "btrfs", "/dev/mapper/luks-0f1e2d3c"),
        ("0:31", "/home", "btrfs", "/dev/mapper/luks-0f1e2d3c"),
        ("0:33", "/var/lib/qubes/pool", "btrfs", "/dev/nvme1n1p1"),
        ("8:1", "/boot", "ext4", "/dev/sda1"),
    ]);
    env.set_mountinfo(&mounts);
    assert_dom0_keeps(&env, &[NVME0, NVME1, SATA], "filesystem dom0 has mounted");
}

/// A second disk holding an LVM thin pool of other qubes' volumes
/// (`qvm-pool add … lvm_thin`): active device-mapper devices, nothing of
/// them mounted in dom0. The root is ext4 on LVM on LUKS on the first disk.
#[test]
fn unmounted_thin_pool_on_a_second_nvme() {
    let sys = world();
    sys.add_dm_device("dm-0", "253:0", "luks-aa", &["nvme0n1p3"]);
    sys.add_dm_device("dm-1", "253:1", "qubes_dom0-root", &["dm-0"]);
    sys.add_dm_device("dm-3", "253:3", "vg2-pool_tmeta", &["nvme1n1p1"]);
    sys.add_dm_device("dm-4", "253:4", "vg2-pool_tdata", &["nvme1n1p1"]);
    sys.add_dm_device("dm-5", "253:5", "vg2-pool-tpool", &["dm-3", "dm-4"]);
    sys.add_dm_device("dm-6", "253:6", "vg2-vm--work--private", &["dm-5"]);
    let env = env(sys);
    let mut mounts = common::VIRTUAL_MOUNTS.to_vec();
    mounts.push(("253:1", "/", "ext4", "/dev/mapper/qubes_dom0-root"));
    env.set_mountinfo(&mounts);
    assert_dom0_keeps(&env, &[NVME1], "active device-mapper or md device");
    // The first disk, too (mounted, and held).
    let (kind, _) = error_of(&env.call(
        "mgmt",
        "work",
        &format!("admin.vm.device.pci.Assign+{}", port(NVME0)),
        b"mode='required'",
    ));
    assert_eq!(kind, "QubesValueError");
}

/// A member of an assembled md array (not mounted), on the SATA disk and
/// the second NVMe disk.
#[test]
fn md_array_member() {
    let sys = world();
    sys.add_md("md0", "9:0", &["sda1", "nvme1n1p2"]);
    let env = env(sys);
    assert_dom0_keeps(&env, &[SATA, NVME1], "active device-mapper or md device");
}

/// Swap on a partition of the second disk, on a logical volume over LUKS
/// on the first, and in a file on the filesystem mounted from the SATA
/// disk.
#[test]
fn swap_on_a_partition_a_logical_volume_and_a_file() {
    let sys = world();
    sys.add_dm_device("dm-0", "253:0", "luks-bb", &["nvme0n1p2"]);
    sys.add_dm_device("dm-2", "253:2", "qubes_dom0-swap", &["dm-0"]);
    let env = env(sys);
    let mut mounts = common::VIRTUAL_MOUNTS.to_vec();
    mounts.push(("8:1", "/var/spool", "ext4", "/dev/sda1"));
    env.set_mountinfo(&mounts);
    env.set_swaps(&[
        ("/dev/nvme1n1p3", "partition"),
        ("/dev/mapper/qubes_dom0-swap", "partition"),
        ("/var/spool/swap\\040file", "file"),
    ]);
    assert_dom0_keeps(&env, &[NVME1, NVME0, SATA], "swap");
}

/// The classic layout: ext4 on LVM on LUKS, found by the mounted device
/// number and followed down `slaves/`.
#[test]
fn ext4_on_lvm_on_luks() {
    let sys = world();
    sys.add_dm_device("dm-0", "253:0", "luks-cc", &["nvme0n1p3"]);
    sys.add_dm_device("dm-1", "253:1", "qubes_dom0-root", &["dm-0"]);
    let env = env(sys);
    let mut mounts = common::VIRTUAL_MOUNTS.to_vec();
    mounts.push(("253:1", "/", "ext4", "/dev/mapper/qubes_dom0-root"));
    env.set_mountinfo(&mounts);
    assert_dom0_keeps(&env, &[NVME0], "filesystem dom0 has mounted");
}

/// When dom0's storage cannot be read, nothing can be ruled out: a qube's
/// request is refused and says so; dom0 may still, with a warning.
#[test]
fn an_unreadable_picture_fails_closed_for_qubes() {
    let env = env(world());
    for broken in [
        // a mounted block device that sysfs does not show
        vec![("8:99", "/", "ext4", "/dev/sdz1")],
        // a btrfs whose source cannot be found, with /sys/fs/btrfs absent
        vec![("0:40", "/", "btrfs", "/dev/mapper/gone")],
    ] {
        let mut mounts = common::VIRTUAL_MOUNTS.to_vec();
        mounts.extend(broken);
        env.set_mountinfo(&mounts);
        let (kind, msg) = error_of(&env.call(
            "mgmt",
            "work",
            &format!("admin.vm.device.pci.Assign+{}", port(CONTROL)),
            b"mode='required'",
        ));
        assert_eq!(kind, "QubesValueError", "{msg}");
        assert!(msg.contains("could not be read"), "{msg}");
        assert!(
            !msg.contains("sdz1") && !msg.contains("/dev/"),
            "no dom0 internals: {msg}"
        );
    }
    std::fs::remove_file(env.dir.path().join("proc/self/mountinfo")).unwrap();
    let (_, msg) = error_of(&env.call(
        "mgmt",
        "work",
        &format!("admin.vm.device.pci.Assign+{}", port(CONTROL)),
        b"mode='required'",
    ));
    assert!(msg.contains("could not be read"), "{msg}");
    assert!(env.recorded().is_empty());
    body_of(&env.call(
        "dom0",
        "work",
        &format!("admin.vm.device.pci.Assign+{}", port(CONTROL)),
        b"mode='required'",
    ));
    assert_eq!(env.recorded().len(), 1, "dom0 itself may");
}
