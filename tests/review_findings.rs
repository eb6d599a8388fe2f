#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Regression tests for the findings of the hostile review (issue
//! "Hardening: fuzz every parser…"), each through the built binary.

mod common;

use common::{body_of, error_of, FakeDev, FakeSysfs, TestEnv, BIN};

fn m(method: &str, arg: &str) -> String {
    format!("admin.vm.device.pci.{method}+{arg}")
}

/// Finding 1: a deny rule on one spelling of a device is not dodged by
/// another spelling; `policy lint` warns about rules on other spellings.
#[test]
fn a_deny_rule_covers_every_spelling_of_the_device() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign +dom0+00_14.0+_ mgmt @anyvm deny\n\
         admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n",
    );
    for spelling in [
        "dom0+00_14.0+_",
        "dom0+00_14.0",
        "dom0+0000_00_14.0+_",
        "dom0+0000_00_14.0",
    ] {
        let (kind, _) = error_of(&env.call("mgmt", "work", &m("Assign", spelling), b"mode='required'"));
        assert_eq!(kind, "QubesDaemonAccessError", "{spelling} must be denied");
    }
    assert!(env.recorded().is_empty(), "nothing assigned");
    // Another device is still allowed.
    body_of(&env.call("mgmt", "work", &m("Assign", "dom0+00_1f.6"), b"mode='required'"));
    // Available's port argument is checked the same way.
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Available +00_14.0 mgmt @anyvm deny\n\
         admin.vm.device.pci.Available * mgmt @anyvm allow target=dom0\n",
    );
    let (kind, _) = error_of(&env.call("mgmt", "@adminvm", "admin.vm.device.pci.Available+0000_00_14.0", b""));
    assert_eq!(kind, "QubesDaemonAccessError");
    // lint: a rule on a non-canonical spelling is dodged by the canonical one.
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign +dom0+0000_00_14.0 mgmt @anyvm deny\n\
         admin.vm.device.pci.Unassign +dom0+00_14.0+_ mgmt @anyvm deny\n\
         admin.vm.device.pci.Detach +nonsense mgmt @anyvm deny\n",
    );
    let out = env.cli(&["policy", "lint"], b"");
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("30-test.policy:1: warning") && err.contains("+dom0+00_14.0+_"),
        "{err}"
    );
    assert!(!err.contains("30-test.policy:2:"), "a canonical rule is fine: {err}");
    assert!(err.contains("30-test.policy:3: warning"), "{err}");
}

/// Finding 3: every bridge class (0x06xx) stays in dom0, the ISA bridge too.
#[test]
fn isa_and_other_bridges_stay_in_dom0() {
    let mut sys = FakeSysfs::new(&["0000:00"]);
    sys.add(FakeDev::new("0000:00:1f.0", 0x8086, 0x9d4e, 0x060100))
        .add(FakeDev::new("0000:00:1e.0", 0x8086, 0x1234, 0x068000))
        .add(FakeDev::new("0000:00:14.0", 0x8086, 0x8cb1, 0x0c0330));
    let env = TestEnv::new(sys);
    for (port, kind) in [("00_1f.0", "ISA bridge"), ("00_1e.0", "bridge")] {
        let (ty, msg) = error_of(&env.call(
            "dom0",
            "work",
            &m("Assign", &format!("dom0+{port}")),
            b"mode='required'",
        ));
        assert_eq!(ty, "QubesValueError");
        assert!(msg.contains(kind) && msg.contains("stay in dom0"), "{msg}");
    }
    let listed = body_of(&env.call("dom0", "@adminvm", "admin.vm.device.pci.Available+00_1f.0", b""));
    assert!(listed.contains("_bridge='True'"), "{listed}");
    assert!(env.recorded().is_empty());
}

/// Finding 6: every entry point answers every input with a typed reply.
#[test]
fn call_with_hyphen_values_gets_a_typed_reply() {
    let env = TestEnv::new(FakeSysfs::standard());
    for (source, target) in [("mgmt", "-x"), ("-x", "work"), ("--", "work")] {
        let out = env.call(source, target, "admin.vm.device.pci.Available", b"");
        let (ty, msg) = error_of(&out);
        assert_eq!(ty, "ProtocolError", "{source} {target}: {msg}");
        assert!(msg.contains("invalid qube name"), "{msg}");
    }
    let out = env.call("mgmt", "work", "-admin.vm.device.pci.Available", b"");
    assert_eq!(error_of(&out).0, "ProtocolError");
}

/// Finding 7: what goes back to a qube names no dom0 path, setting or
/// recovery command; the journal gets those.
#[test]
fn replies_name_no_dom0_internals() {
    let env = TestEnv::new(FakeSysfs::standard());
    let missing = env.dir.path().join("no-such-sysfs");
    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .env("QUBES_PCI_ADMIN_SYSFS", &missing)
        .args([
            "call",
            "--source",
            "dom0",
            "--target",
            "@adminvm",
            "admin.vm.device.pci.Available",
        ]);
    let (ty, msg) = error_of(&common::run(c, b""));
    assert_eq!(ty, "QubesException");
    assert!(!msg.contains('/') && !msg.contains("--sysfs"), "{msg}");
    // Bad settings in exec mode: the variable's name stays in dom0.
    let link = env.dir.path().join("admin.vm.device.pci.Available");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut c = std::process::Command::new(&link);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .env("QUBES_PCI_ADMIN_QUBESD_TIMEOUT_MS", "soon")
        .env("QREXEC_REMOTE_DOMAIN", "mgmt")
        .env("QREXEC_REQUESTED_TARGET_TYPE", "keyword")
        .env("QREXEC_REQUESTED_TARGET_KEYWORD", "adminvm");
    let (ty, msg) = error_of(&common::run(c, b""));
    assert_eq!(ty, "QubesException");
    assert!(!msg.contains("QUBES_PCI_ADMIN") && !msg.contains("soon"), "{msg}");
}

/// Finding 2: devices dom0 cannot live without are never given away at a
/// qube's request: its console GPU, the controllers under its mounted
/// filesystems, swap and device-mapper stacks, and its input devices'
/// controller. From dom0 the same call works, with a warning.
#[test]
fn devices_dom0_uses_are_refused_to_qubes() {
    let mut sys = FakeSysfs::new(&["0000:00", "0001:00"]);
    sys.add(FakeDev::new("0000:00:02.0", 0x8086, 0x9b41, 0x030000))
        .add(FakeDev::new("0000:00:14.0", 0x8086, 0x8cb1, 0x0c0330))
        .add(FakeDev::new("0000:00:17.0", 0x8086, 0x02d3, 0x010601))
        .add(FakeDev::new("0001:00:02.0", 0x144d, 0xa808, 0x010802))
        .add(FakeDev::new("0000:00:1f.6", 0x8086, 0x15a3, 0x020000))
        .add(FakeDev::new("0000:00:1f.3", 0x8086, 0x9ca0, 0x040300));
    sys.set_boot_vga("0000:00:02.0");
    sys.add_input("0000:00:14.0", "input3");
    sys.add_block("0000:00:17.0", "sda2", "8:2");
    sys.add_block("0001:00:02.0", "nvme0n1p3", "259:3");
    sys.add_block("0000:00:1f.3", "sdb1", "8:17");
    sys.add_dm("dm-0", "253:0", &["nvme0n1p3"]);
    let env = TestEnv::new(sys);
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n",
    );
    // / on dm-0 (over the NVMe disk), /boot on sda2, swap on sdb1.
    env.set_dom0_mounts(&[("0:22", "/proc"), ("253:0", "/"), ("8:2", "/boot")], &["/dev/sdb1"]);
    for (port, why) in [
        ("00_02.0", "console GPU"),
        ("00_14.0", "input devices"),
        ("00_17.0", "filesystem dom0 has mounted"),
        ("0001_00_02.0", "filesystem dom0 has mounted"),
        ("00_1f.3", "swap"),
    ] {
        let (ty, msg) = error_of(&env.call(
            "mgmt",
            "work",
            &m("Assign", &format!("dom0+{port}")),
            b"mode='required'",
        ));
        assert_eq!(ty, "QubesValueError", "{port}: {msg}");
        assert!(msg.contains(why) && msg.contains("from dom0"), "{port}: {msg}");
        assert!(
            !msg.contains("/boot") && !msg.contains("253:0"),
            "no dom0 internals: {msg}"
        );
    }
    assert!(env.recorded().is_empty());
    // What dom0 does not use is fine; and dom0 itself may (it is warned).
    body_of(&env.call("mgmt", "work", &m("Assign", "dom0+00_1f.6"), b"mode='required'"));
    body_of(&env.call("dom0", "sys-usb", &m("Assign", "dom0+00_14.0"), b"mode='required'"));
    assert_eq!(env.recorded().len(), 2);
    // The extension's check applies it too, by source.
    let facts = |source: &str| {
        serde_json::json!({"source": source, "dest": "work", "dest_virt_mode": "hvm",
            "device": {"port": "00_17.0"}, "mode": "required", "options": {}, "assignments": [],
            "system": {"mgmt": {"type": "AppVM"}, "work": {"type": "AppVM"}}})
    };
    let verdict = |f: serde_json::Value| -> serde_json::Value {
        serde_json::from_slice(&env.cli(&["check", "assign"], f.to_string().as_bytes()).stdout).unwrap()
    };
    assert_eq!(verdict(facts("mgmt"))["exception"], "QubesValueError");
    assert_eq!(verdict(facts("dom0")), serde_json::json!({"ok": true}));
}
