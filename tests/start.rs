#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! A qube's start and stop (`prepare-start`, `release`) and the methods
//! that depend on them (`Attached`, `Attach`, `Detach`), through the built
//! binary against a fake sysfs.

mod common;

use common::{body_of, error_of, FakeSysfs, TestEnv};

const USB: &str = "dom0+00_14.0+0x8086+0x8cb1++p0c0330";
const USB_SIBLING: &str = "dom0+00_14.2+0x8086+0x8cb2++p118000";
const NIC: &str = "dom0+00_1f.6+0x8086+0x15a3++p020000";

fn m(method: &str, arg: &str) -> String {
    format!("admin.vm.device.pci.{method}+{arg}")
}

fn assign(env: &TestEnv, qube: &str, arg: &str, mode: &str, opts: &str) {
    let out = env.call(
        "dom0",
        qube,
        &m("Assign", arg),
        format!("mode='{mode}'{opts}").as_bytes(),
    );
    body_of(&out);
}

fn start(env: &TestEnv, qube: &str) -> std::process::Output {
    env.cli(&["prepare-start", qube], b"")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn start_binds_to_pciback_and_prints_hostdev_xml() {
    let env = TestEnv::new(FakeSysfs::standard());
    assign(
        &env,
        "sys-usb",
        USB,
        "required",
        " _no-strict-reset='True' _permissive='True'",
    );
    let out = start(&env, "sys-usb");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Unbound from its driver, then new_slot and bind on pciback.
    assert_eq!(env.sysfs.written("xhci_hcd", "unbind"), "0000:00:14.0");
    assert_eq!(env.sysfs.written("pciback", "new_slot"), "0000:00:14.0");
    assert_eq!(env.sysfs.written("pciback", "bind"), "0000:00:14.0");
    let xml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        xml,
        "<hostdev type='pci' managed='yes' nostrictreset='yes'>\n  <source writeFiltering='no'>\n    \
         <address domain='0x0000' bus='0x00' slot='0x14' function='0x0'/>\n  </source>\n</hostdev>\n"
    );
    let holds = &env.dump()["holds"];
    assert_eq!(holds.as_array().unwrap().len(), 1);
    assert_eq!(holds[0]["qube"], "sys-usb");
}

#[test]
fn options_off_give_plain_hostdev() {
    let env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "sys-net", NIC, "required", "");
    let out = start(&env, "sys-net");
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(
        xml.starts_with("<hostdev type='pci' managed='yes'>\n  <source>\n"),
        "{xml}"
    );
    assert!(xml.contains("slot='0x1f' function='0x6'"), "{xml}");
}

#[test]
fn missing_required_device_refuses_start_and_auto_attach_is_skipped() {
    let mut env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "work", USB, "required", "");
    assign(&env, "work", NIC, "auto-attach", "");
    env.sysfs.remove("0000:00:1f.6");
    let out = start(&env, "work");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not attached") && stderr(&out).contains("00_1f.6"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("0x1f"));
    env.cli(&["release", "work"], b"");
    env.sysfs.remove("0000:00:14.0");
    let out = start(&env, "work");
    assert_eq!(out.status.code(), Some(1));
    let msg = stderr(&out);
    assert!(
        msg.contains("00_14.0") && msg.contains("not present") && msg.contains("qvm-pci unassign work"),
        "{msg}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        env.dump()["holds"].as_array().unwrap().len(),
        0,
        "a refused start holds nothing"
    );
}

#[test]
fn a_device_in_use_by_a_running_qube_refuses_the_other_start() {
    let env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "sys-usb", USB, "required", "");
    assign(&env, "work", USB, "required", "");
    assert_eq!(start(&env, "sys-usb").status.code(), Some(0));
    env.set_power("sys-usb", "Running");
    env.set_prop("work", "memory_balancing", serde_json::Value::Bool(true));
    let out = start(&env, "work");
    assert_eq!(out.status.code(), Some(1));
    let msg = stderr(&out);
    assert!(
        msg.contains("in use by sys-usb") && msg.contains("Shut sys-usb down"),
        "{msg}"
    );
    assert!(msg.contains("memory balancing"), "mentions memory balancing: {msg}");
    // Once sys-usb is shown halted, its hold is stale and does not block.
    env.set_power("sys-usb", "Halted");
    let out = start(&env, "work");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale"));
    let holds = env.dump()["holds"].clone();
    assert_eq!(holds.as_array().unwrap().len(), 1);
    assert_eq!(holds[0]["qube"], "work");
}

#[test]
fn a_sibling_function_held_elsewhere_refuses_the_start_unless_no_strict_reset() {
    let env = TestEnv::new(FakeSysfs::standard());
    // Split with no-strict-reset on both sides: both may run.
    assign(&env, "sys-usb", USB, "required", " _no-strict-reset='True'");
    assign(&env, "work", USB_SIBLING, "required", " _no-strict-reset='True'");
    assert_eq!(start(&env, "sys-usb").status.code(), Some(0));
    env.set_power("sys-usb", "Running");
    let out = start(&env, "work");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    env.cli(&["release", "work"], b"");
    env.cli(&["release", "sys-usb"], b"");
    env.set_power("sys-usb", "Halted");
    body_of(&env.call("dom0", "work", &m("Unassign", USB_SIBLING), b""));
    body_of(&env.call("dom0", "sys-usb", &m("Unassign", USB), b""));
    // sys-usb runs with 00_14.0 without no-strict-reset, then loses the
    // assignment (Unassign never detaches); work gets the sibling.
    assign(&env, "sys-usb", USB, "required", "");
    assert_eq!(start(&env, "sys-usb").status.code(), Some(0));
    env.set_power("sys-usb", "Running");
    body_of(&env.call("dom0", "sys-usb", &m("Unassign", USB), b""));
    assign(&env, "work", USB_SIBLING, "required", " _no-strict-reset='True'");
    let out = start(&env, "work");
    assert_eq!(out.status.code(), Some(1));
    let msg = stderr(&out);
    assert!(
        msg.contains("00_14.2")
            && msg.contains("00_14.0")
            && msg.contains("sys-usb")
            && msg.contains("no-strict-reset"),
        "{msg}"
    );
    assert!(
        !msg.contains("memory balancing"),
        "work has memory balancing off: {msg}"
    );
    assert_eq!(env.dump()["holds"].as_array().unwrap().len(), 1);
}

#[test]
fn release_drops_holds_and_never_rebinds_to_a_dom0_driver() {
    let env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "sys-usb", USB, "required", "");
    start(&env, "sys-usb");
    std::fs::write(env.sysfs.root().join("bus/pci/drivers/xhci_hcd/unbind"), "").unwrap();
    let out = env.cli(&["release", "sys-usb"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stays bound to pciback"));
    assert_eq!(env.dump()["holds"].as_array().unwrap().len(), 0);
    // Nothing was written anywhere a dom0 driver would take the device back.
    let xhci = env.sysfs.root().join("bus/pci/drivers/xhci_hcd");
    assert!(!xhci.join("bind").exists());
    assert_eq!(env.sysfs.written("xhci_hcd", "unbind"), "");
    assert!(!env.sysfs.root().join("bus/pci/drivers_probe").exists());
    // The assignment itself stays.
    assert!(body_of(&env.call("dom0", "sys-usb", "admin.vm.device.pci.Assigned", b"")).contains("00_14.0"));
}

#[test]
fn device_already_on_pciback_is_not_rebound() {
    let mut sys = FakeSysfs::new(&["0000:00"]);
    sys.add(common::FakeDev::new("0000:00:14.0", 0x8086, 0x8cb1, 0x0c0330).driver("pciback"));
    let env = TestEnv::new(sys);
    assign(&env, "sys-usb", USB, "required", "");
    let out = start(&env, "sys-usb");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.sysfs.written("pciback", "bind"), "");
    assert_eq!(env.sysfs.written("pciback", "unbind"), "");
}

#[test]
fn attached_lists_what_a_running_qube_holds() {
    let env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "sys-usb", "dom0+00_14.0", "required", " _no-strict-reset='True'");
    start(&env, "sys-usb");
    // Halted (as the system info still says): nothing attached.
    assert_eq!(
        body_of(&env.call("dom0", "sys-usb", "admin.vm.device.pci.Attached", b"")),
        ""
    );
    env.set_power("sys-usb", "Running");
    let body = body_of(&env.call("dom0", "sys-usb", "admin.vm.device.pci.Attached", b""));
    assert_eq!(
        body,
        "dom0+00_14.0:0x8086:0x8cb1::p0c0330 device_id='0x8086:0x8cb1::p0c0330' port_id='00_14.0' devclass='pci' \
         backend_domain='dom0' mode='required' frontend_domain='sys-usb' _no-strict-reset='True'\n"
    );
    // Unassigned while running: still attached, now shown as manual.
    body_of(&env.call("dom0", "sys-usb", &m("Unassign", "dom0+00_14.0"), b""));
    let body = body_of(&env.call("dom0", "sys-usb", "admin.vm.device.pci.Attached", b""));
    assert!(body.contains("mode='manual'"), "{body}");
    let filtered = body_of(&env.call("dom0", "sys-usb", "admin.vm.device.pci.Attached+dom0+00_1f.6", b""));
    assert_eq!(filtered, "");
}

#[test]
fn attach_and_detach_answer_as_upstream_for_halted_qubes_and_refuse_hot_plug() {
    let env = TestEnv::new(FakeSysfs::standard());
    // Halted: upstream's answers.
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Attach", USB), b""));
    assert_eq!(kind, "QubesVMNotRunningError");
    assert!(msg.contains("do you mean `assign`"), "{msg}");
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Detach", USB), b""));
    assert_eq!(kind, "DeviceNotAssigned");
    assert_eq!(msg, "pci device 00_14.0 not attached to work");
    // Running, device not held: hot-plug refused with the way to do it.
    env.set_power("work", "Running");
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Attach", USB), b"mode='required'"));
    assert_eq!(kind, "QubesVMNotHaltedError");
    assert!(
        msg.contains("qvm-pci assign --required work dom0:00_14.0") && msg.contains("restart work"),
        "{msg}"
    );
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Detach", USB), b""));
    assert_eq!(kind, "DeviceNotAssigned");
    // Running and holding it: already attached / detach refused.
    env.set_power("work", "Halted");
    assign(&env, "work", USB, "required", "");
    start(&env, "work");
    env.set_power("work", "Running");
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Attach", USB), b""));
    assert_eq!(kind, "DeviceAlreadyAttached");
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Detach", USB), b""));
    assert_eq!(kind, "QubesVMNotHaltedError");
    assert!(
        msg.contains("qvm-pci unassign work dom0:00_14.0") && msg.contains("not given back to dom0"),
        "{msg}"
    );
    // dom0 is never a target.
    let (kind, _) = error_of(&env.call("dom0", "dom0", &m("Attach", USB), b""));
    assert_eq!(kind, "QubesException");
    // Nothing of this was a write.
    assert_eq!(env.dump()["generation"], 2);
}

#[test]
fn libvirt_hook_calls_prepare_start_and_release() {
    let hook = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/service/libvirt-hook-libxl")).unwrap();
    assert!(hook.contains("prepare-start") && hook.contains("release"));
    let mut env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "sys-usb", USB, "required", "");
    let bin_dir = env.dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(common::BIN, bin_dir.join("qubes-pci-admin")).unwrap();
    let run = |env: &TestEnv, op: &str| {
        let mut c = std::process::Command::new("sh");
        c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/service/libvirt-hook-libxl"))
            .args(["sys-usb", op, "begin", "-"])
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()),
            )
            .env("QUBES_PCI_ADMIN_LOG", "off");
        for (k, v) in env.envs() {
            c.env(k, v);
        }
        common::run(c, b"<domain/>")
    };
    let out = run(&env, "prepare");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.dump()["holds"].as_array().unwrap().len(), 1);
    assert_eq!(run(&env, "started").status.code(), Some(0));
    assert_eq!(env.dump()["holds"].as_array().unwrap().len(), 1);
    assert_eq!(run(&env, "release").status.code(), Some(0));
    assert_eq!(env.dump()["holds"].as_array().unwrap().len(), 0);
    // A refused start makes the hook fail, which aborts the start.
    env.sysfs.remove("0000:00:14.0");
    let out = run(&env, "prepare");
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("not present"), "{}", stderr(&out));
    // Other qubes' events do not touch the store.
    assert_eq!(run(&env, "reconnect").status.code(), Some(0));
}

#[test]
fn no_bind_checks_and_records_but_writes_nothing_to_sysfs() {
    let env = TestEnv::new(FakeSysfs::standard());
    assign(&env, "sys-usb", USB, "required", "");
    let out = env.cli(&["prepare-start", "--no-bind", "sys-usb"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("slot='0x14'"));
    assert_eq!(env.sysfs.written("xhci_hcd", "unbind"), "");
    assert_eq!(env.sysfs.written("pciback", "bind"), "");
    assert_eq!(env.dump()["holds"].as_array().unwrap().len(), 1);
}
