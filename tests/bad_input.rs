#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Hostile and malformed requests get a typed `2\0` reply, never a panic or
//! an empty reply, in every entry mode.

mod common;

use common::{error_of, FakeSysfs, TestEnv, BIN};

const AVAILABLE: &str = "admin.vm.device.pci.Available";

fn socket(env: &TestEnv, request: &[u8]) -> std::process::Output {
    env.cli(&["serve-connection"], request)
}

fn assert_protocol_error(out: &std::process::Output, needle: &str) {
    let (ty, msg) = error_of(out);
    assert_eq!(ty, "ProtocolError", "message: {msg}");
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
}

#[test]
fn socket_framing_errors() {
    let env = TestEnv::new(FakeSysfs::standard());
    assert_protocol_error(
        &socket(&env, b"admin.vm.device.pci.Available+ dom0 name dom0"),
        "not terminated by NUL",
    );
    assert_protocol_error(
        &socket(&env, b"admin.vm.device.pci.Available+ dom0 name\0"),
        "fewer than four fields",
    );
    assert_protocol_error(
        &socket(&env, b"admin.vm.device.pci.Available+ dom0 alias dom0\0"),
        "neither name nor keyword",
    );
    assert_protocol_error(
        &socket(&env, b"admin.vm.device.pci.Available+ dom0 keyword dispvm\0"),
        "@dispvm",
    );
    // The same connection, well formed, answers.
    let ok = socket(&env, b"admin.vm.device.pci.Available+00_14.0 dom0 keyword adminvm\0");
    assert!(common::body_of(&ok).starts_with("00_14.0:"));
}

#[test]
fn oversized_requests_are_refused_in_every_mode() {
    let env = TestEnv::new(FakeSysfs::standard());
    let big = vec![b'x'; 70_000];
    assert_protocol_error(&env.call("dom0", "dom0", AVAILABLE, &big), "longer than 65536");
    let exec = env.exec(AVAILABLE, "", "dom0", "dom0", &big);
    assert_eq!(exec.status.code(), Some(0), "exec mode exits 0 after a reply");
    assert_protocol_error(&exec, "longer than 65536");
    let mut req = b"admin.vm.device.pci.Available+ dom0 name dom0\0".to_vec();
    req.extend_from_slice(&big);
    assert_protocol_error(&socket(&env, &req), "longer than 65536");
    // Exactly at the cap is still read (and then refused for carrying a payload).
    let at_cap = vec![b'x'; 65536];
    assert_protocol_error(&env.call("dom0", "dom0", AVAILABLE, &at_cap), "unexpected payload");
}

#[test]
fn unknown_methods_and_bad_arguments() {
    let env = TestEnv::new(FakeSysfs::standard());
    assert_protocol_error(
        &env.call("dom0", "dom0", "admin.vm.device.pci.List", b""),
        "no such method",
    );
    assert_protocol_error(
        &env.exec("admin.vm.device.pci.Frobnicate", "", "dom0", "dom0", b""),
        "no such method",
    );
    // qrexec never passes '/', ' ' or ':' in an argument.
    assert_protocol_error(
        &env.call("dom0", "dom0", &format!("{AVAILABLE}+00_14.0/../../x"), b""),
        "characters qrexec never passes",
    );
    assert_protocol_error(
        &env.call("dom0", "dom0", &format!("{AVAILABLE}+00:14.0"), b""),
        "characters qrexec never passes",
    );
    // Port ids that try to leave the sysfs root or are malformed.
    for bad in ["..", "00_14.0-..", "..-00_14.0", "00_14.8", "00_14", "0000_00_20.0"] {
        assert_protocol_error(
            &env.call("dom0", "dom0", &format!("{AVAILABLE}+{bad}"), b""),
            "invalid PCI port id",
        );
    }
    // Device arguments with a malformed device id or port.
    for bad in [
        "dom0+00_14.0+0x8086",
        "dom0+00_14.0+0x8086+0x8cb1++p0c033",
        "dom0+..+_",
        "-x+00_14.0",
    ] {
        let out = env.call("dom0", "work", &format!("admin.vm.device.pci.Unassign+{bad}"), b"");
        assert_eq!(error_of(&out).0, "ProtocolError", "{bad}");
    }
}

#[test]
fn payload_and_argument_rules() {
    let env = TestEnv::new(FakeSysfs::standard());
    assert_protocol_error(&env.call("dom0", "dom0", AVAILABLE, b"x"), "unexpected payload");
    assert_protocol_error(
        &env.call("dom0", "work", "admin.vm.device.pci.Assigned", b"x"),
        "unexpected payload",
    );
    assert_protocol_error(
        &env.call("dom0", "work", "admin.vm.device.pci.Unassign", b""),
        "expected an argument",
    );
    assert_protocol_error(
        &env.call("dom0", "work", "admin.vm.device.pci.Assign+dom0+00_14.0", b""),
        "expected payload",
    );
}

#[test]
fn bad_names_and_missing_environment() {
    let env = TestEnv::new(FakeSysfs::standard());
    assert_protocol_error(&env.call("../dom0", "dom0", AVAILABLE, b""), "invalid qube name");
    assert_protocol_error(&env.call("dom0", "a b", AVAILABLE, b""), "invalid qube name");
    // Exec mode without QREXEC_REMOTE_DOMAIN still answers.
    let link = env.dir.path().join(AVAILABLE);
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut c = std::process::Command::new(&link);
    c.env_clear().env("QUBES_PCI_ADMIN_LOG", "off");
    let out = common::run(c, b"");
    assert_eq!(out.status.code(), Some(0));
    assert_protocol_error(&out, "QREXEC_REMOTE_DOMAIN");
}

/// A refused `Available` of dom0, where the devices are, is the access
/// error stock `qvm-pci list` reports as "you do not have access" (not a
/// skippable one, which would list no device and exit 0); reads of other
/// qubes stay skippable.
#[test]
fn non_dom0_callers_are_denied_without_a_policy() {
    let env = TestEnv::new(FakeSysfs::standard());
    let out = env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"");
    assert_eq!(out.status.code(), Some(0));
    let (ty, msg) = error_of(&out);
    assert_eq!(ty, "QubesDaemonAccessError");
    assert!(msg.contains(AVAILABLE), "{msg}");
    let call = env.call("work", "dom0", AVAILABLE, b"");
    assert_eq!(call.status.code(), Some(2));
    assert_eq!(error_of(&call).0, "QubesDaemonAccessError");
    for (method, target) in [
        (AVAILABLE, "sys-net"),
        ("admin.vm.device.pci.Attached", "sys-net"),
        ("admin.vm.device.pci.Assigned", "work"),
    ] {
        assert_eq!(
            error_of(&env.call("work", target, method, b"")).0,
            "QubesVMNotFoundError",
            "{method} {target}"
        );
    }
    // Attached of dom0 (which the stock client asks before Available): an
    // access error for a caller that may not read dom0's devices, skippable
    // for one that may.
    let attached = "admin.vm.device.pci.Attached";
    assert_eq!(
        error_of(&env.call("work", "dom0", attached, b"")).0,
        "QubesDaemonAccessError"
    );
    env.write_policy(
        "30-test.policy",
        &format!("{AVAILABLE} * work @adminvm allow target=dom0\n"),
    );
    assert_eq!(
        error_of(&env.call("work", "dom0", attached, b"")).0,
        "QubesVMNotFoundError"
    );
}

#[test]
fn qubesd_not_answering_is_explained_without_dom0_internals() {
    let mut env = TestEnv::new(FakeSysfs::standard());
    env.stop_standin();
    let (ty, msg) = error_of(&env.call("mgmt", "dom0", AVAILABLE, b""));
    assert_eq!(ty, "QubesException");
    assert!(msg.contains("qubesd") && msg.contains("Try again"), "{msg}");
    assert!(!msg.contains('/') && !msg.contains("QUBES_PCI_ADMIN"), "{msg}");
}

#[test]
fn hostile_writes_get_typed_replies_and_leave_qubesd_record_alone() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Unassign * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Set.assignment * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Attach * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Detach * mgmt @anyvm allow target=dom0\n",
    );
    let before = env.qubes_xml_bytes();
    let usb = "dom0+00_14.0+0x8086+0x8cb1++p0c0330";
    let cases: Vec<(String, Vec<u8>)> = vec![
        (format!("Assign+{usb}"), b"mode='required' devclass='usb'".to_vec()),
        (
            format!("Assign+{usb}"),
            b"mode='required' _no-strict-reset='False' _x='1'".to_vec(),
        ),
        (
            format!("Assign+{usb}"),
            b"mode='required' frontend_domain='dom0'".to_vec(),
        ),
        (format!("Assign+{usb}"), b"mode='required\xff'".to_vec()),
        (
            format!("Assign+{usb}"),
            b"mode='required' port_id='00_14.0-00_00.0'".to_vec(),
        ),
        (format!("Assign+{usb}"), b"mode=required".to_vec()),
        (format!("Assign+{usb}"), b"mode='manual'".to_vec()),
        (
            format!("Assign+{usb}"),
            b"mode='required' backend_domain='sys-usb'".to_vec(),
        ),
        ("Assign+dom0+_".to_owned(), b"mode='required'".to_vec()),
        ("Assign+dom0+00_14.0+x".to_owned(), b"mode='required'".to_vec()),
        ("Assign+sys-net+00_14.0".to_owned(), b"mode='required'".to_vec()),
        ("Assign+dom0+00_1c.0".to_owned(), b"mode='required'".to_vec()),
        (
            "Assign+dom0+00_00.0-00_00.0-00_00.0-00_00.0".to_owned(),
            b"mode='required'".to_vec(),
        ),
        (format!("Set.assignment+{usb}"), b"required\0".to_vec()),
        (format!("Set.assignment+{usb}"), b"manual".to_vec()),
        (format!("Unassign+{usb}"), b"x".to_vec()),
        (format!("Attach+{usb}"), b"mode='required'".to_vec()),
        (format!("Detach+{usb}"), b"".to_vec()),
    ];
    for (method, payload) in &cases {
        for target in ["work", "sys-net", "dom0"] {
            let out = env.call("mgmt", target, &format!("admin.vm.device.pci.{method}"), payload);
            let (ty, msg) = error_of(&out);
            assert!(!ty.is_empty() && !msg.is_empty(), "{method} → {target}");
            assert_ne!(ty, "PermissionDenied", "stock clients would print a traceback");
        }
    }
    assert_eq!(env.qubes_xml_bytes(), before, "qubes.xml unchanged");
    // Refused calls never reach qubesd: only Unassign and Set.assignment of an
    // assignment that does not exist are left for qubesd to answer.
    let writes = env.qubesd_writes();
    assert!(
        writes.iter().all(|w| w["method"] != "admin.vm.device.pci.Assign"
            && w["method"] != "admin.vm.device.pci.Attach"
            && w["method"] != "admin.vm.device.pci.Detach"),
        "{writes:?}"
    );
}
