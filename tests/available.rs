#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! `admin.vm.device.pci.Available` end to end through the built binary.

mod common;

use common::{body_of, error_of, FakeSysfs, TestEnv};

const AVAILABLE: &str = "admin.vm.device.pci.Available";
const GOLDEN: &str = include_str!("data/available-standard.txt");

#[test]
fn golden_listing_from_dom0() {
    let env = TestEnv::new(FakeSysfs::standard());
    let out = env.call("dom0", "dom0", AVAILABLE, b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(body_of(&out), GOLDEN);
}

#[test]
fn exec_mode_gives_the_same_bytes() {
    let env = TestEnv::new(FakeSysfs::standard());
    let out = env.exec(AVAILABLE, "", "dom0", "@adminvm", b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(body_of(&out), GOLDEN);
    let by_name = env.exec(AVAILABLE, "", "dom0", "dom0", b"");
    assert_eq!(by_name.stdout, out.stdout);
}

#[test]
fn lines_are_sorted_and_parse_back() {
    let env = TestEnv::new(FakeSysfs::standard());
    let body = body_of(&env.call("dom0", "@adminvm", AVAILABLE, b""));
    let lines: Vec<&str> = body.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    for line in lines {
        let (head, props) = line.split_once(' ').unwrap();
        let p = qubes_pci_rpc::props::unpack(props.as_bytes()).unwrap();
        let port = p.get("port_id").unwrap();
        let devid = p.get("device_id").unwrap();
        assert_eq!(head, format!("{port}:{devid}"));
        assert_eq!(p.get("devclass"), Some("pci"));
        assert_eq!(p.get("backend_domain"), Some("dom0"));
        assert!(p.options.iter().any(|(k, _)| k == "sbdf"));
    }
}

#[test]
fn argument_filters_one_port() {
    let env = TestEnv::new(FakeSysfs::standard());
    let body = body_of(&env.call("dom0", "dom0", &format!("{AVAILABLE}+00_1c.0-00_00.0"), b""));
    assert_eq!(body.lines().count(), 1);
    assert!(body.starts_with("00_1c.0-00_00.0:0x8086:0x08b1::p028000 "), "{body}");
    assert!(body.contains("_sbdf='0000:02:00.0'"));
    let expected: Vec<&str> = GOLDEN.lines().filter(|l| l.starts_with("00_1c.0-00_00.0:")).collect();
    assert_eq!(body.trim_end(), expected[0]);
    // A well-formed port that does not exist gives an empty list.
    assert_eq!(
        body_of(&env.call("dom0", "dom0", &format!("{AVAILABLE}+00_1d.0"), b"")),
        ""
    );
}

#[test]
fn other_destinations_expose_nothing() {
    let env = TestEnv::new(FakeSysfs::standard());
    assert_eq!(body_of(&env.call("dom0", "sys-net", AVAILABLE, b"")), "");
    let (ty, msg) = error_of(&env.call("dom0", "no-such-qube", AVAILABLE, b""));
    assert_eq!(ty, "QubesVMNotFoundError");
    assert_eq!(msg, "No such domain: no-such-qube");
}

#[test]
fn names_come_from_the_built_in_copy_without_a_file() {
    let env = TestEnv::new(FakeSysfs::standard());
    let mut c = std::process::Command::new(common::BIN);
    c.env_clear().env("QUBES_PCI_ADMIN_LOG", "off");
    for (k, v) in env.envs() {
        if k != "QUBES_PCI_ADMIN_PCI_IDS" {
            c.env(k, v);
        }
    }
    c.env("QUBES_PCI_ADMIN_PCI_IDS", env.dir.path().join("missing.ids"));
    c.args([
        "call",
        "--source",
        "dom0",
        "--target",
        "dom0",
        &format!("{AVAILABLE}+00_14.0"),
    ]);
    let body = body_of(&common::run(c, b""));
    assert!(body.contains("vendor='Intel Corporation'"), "{body}");
    assert!(
        body.contains("product='9 Series Chipset Family USB xHCI Controller'"),
        "{body}"
    );
}

#[test]
fn list_table_and_json() {
    let env = TestEnv::new(FakeSysfs::standard());
    let mut c = std::process::Command::new(common::BIN);
    c.env_clear().env("QUBES_PCI_ADMIN_LOG", "off");
    for (k, v) in env.envs() {
        c.env(k, v);
    }
    let mut json = std::process::Command::new(common::BIN);
    json.envs(env.envs())
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .args(["list", "--json"]);
    let out = common::run(json, b"");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), GOLDEN.lines().count());
    let usb = rows.iter().find(|r| r["port_id"] == "00_14.0").unwrap();
    assert_eq!(
        usb["description"],
        "USB controller: Intel Corporation 9 Series Chipset Family USB xHCI Controller"
    );
    assert_eq!(usb["sbdf"], "0000:00:14.0");
    assert_eq!(usb["assigned_to"], serde_json::json!([]));
    let out = env.cli(&["list"], b"");
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("BACKEND:DEVID") && first.contains("DESCRIPTION") && first.contains("USED BY"));
    assert!(text
        .lines()
        .any(|l| l.starts_with("dom0:00_14.0 ") && l.contains("0000:00:14.0") && l.contains("USB controller")));
    // USED BY shows assignments with their mode and options.
    let out = env.call(
        "dom0",
        "sys-usb",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
        b"mode='required' _no-strict-reset='True'",
    );
    assert!(out.stdout.starts_with(b"0\0"));
    let text = String::from_utf8(env.cli(&["list"], b"").stdout).unwrap();
    let row = text.lines().find(|l| l.starts_with("dom0:00_14.0 ")).unwrap();
    assert!(row.ends_with("sys-usb (required, no-strict-reset=True)"), "{row}");
    let v: serde_json::Value = serde_json::from_slice(&env.cli(&["list", "--json"], b"").stdout).unwrap();
    let usb = common::device_at(&v, "00_14.0");
    assert_eq!(
        usb["assigned_to"],
        serde_json::json!([{"qube": "sys-usb", "mode": "required", "options": {"no-strict-reset": true}}])
    );
}
