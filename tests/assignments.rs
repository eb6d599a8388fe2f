#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The write methods and the passthrough rules at assignment, end to end
//! through the built binary.

mod common;

use common::{body_of, error_of, FakeSysfs, TestEnv};

const USB: &str = "dom0+00_14.0+0x8086+0x8cb1++p0c0330";
const USB_ID: &str = "0x8086:0x8cb1::p0c0330";
const USB_SIBLING: &str = "dom0+00_14.2+0x8086+0x8cb2++p118000";
const NIC: &str = "dom0+00_1f.6+0x8086+0x15a3++p020000";
const WIFI: &str = "dom0+00_1c.0-00_00.0+0x8086+0x08b1++p028000";

fn m(method: &str, arg: &str) -> String {
    format!("admin.vm.device.pci.{method}+{arg}")
}

fn payload(id: &str, port: &str, mode: &str, opts: &str) -> Vec<u8> {
    format!("device_id='{id}' port_id='{port}' devclass='pci' backend_domain='dom0' mode='{mode}'{opts}").into_bytes()
}

fn required() -> Vec<u8> {
    payload(USB_ID, "00_14.0", "required", "")
}

fn env() -> TestEnv {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign    * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Unassign  * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Assigned  * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Set.assignment * mgmt @tag:created-by-mgmt allow target=dom0\n",
    );
    env
}

fn assigned(env: &TestEnv, qube: &str) -> String {
    body_of(&env.call("dom0", qube, "admin.vm.device.pci.Assigned", b""))
}

#[test]
fn assign_is_recorded_and_listed_in_upstream_format() {
    let env = env();
    let out = env.call("dom0", "work", &m("Assign", USB), &required());
    assert_eq!(body_of(&out), "");
    assert_eq!(
        assigned(&env, "work"),
        format!(
            "dom0+00_14.0:{USB_ID} device_id='{USB_ID}' port_id='00_14.0' devclass='pci' backend_domain='dom0' \
             mode='required' frontend_domain='work'\n"
        )
    );
    assert_eq!(assigned(&env, "sys-net"), "");
    // The argument filters by port.
    let filtered = body_of(&env.call("dom0", "work", "admin.vm.device.pci.Assigned+dom0+00_14.0", b""));
    assert!(filtered.starts_with("dom0+00_14.0:"));
    let other = body_of(&env.call("dom0", "work", "admin.vm.device.pci.Assigned+dom0+00_1f.6", b""));
    assert_eq!(other, "");
    // Exec mode writes the same store.
    let out = env.exec(
        "admin.vm.device.pci.Assign",
        NIC,
        "dom0",
        "sys-net",
        &payload("0x8086:0x15a3::p020000", "00_1f.6", "required", ""),
    );
    assert_eq!(body_of(&out), "");
    assert!(assigned(&env, "sys-net").contains("port_id='00_1f.6'"));
    let dump = env.dump();
    assert_eq!(dump["generation"], 2);
    assert_eq!(dump["assignments"][0]["sbdf"], "0000:00:14.0");
    assert_eq!(dump["assignments"][0]["port"], "00_14.0");
}

#[test]
fn identical_assign_is_already_assigned_and_changed_one_replaces_in_one_write() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    assert_eq!(kind, "DeviceAlreadyAssigned");
    assert!(msg.contains("already assigned to work"), "{msg}");
    assert_eq!(env.dump()["generation"], 1, "an identical Assign writes nothing");
    // Other options: replaced in place, one write, still one assignment.
    let with_nsr = payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'");
    body_of(&env.call("dom0", "work", &m("Assign", USB), &with_nsr));
    let dump = env.dump();
    assert_eq!(dump["generation"], 2);
    assert_eq!(dump["assignments"].as_array().unwrap().len(), 1);
    assert!(assigned(&env, "work").contains("_no-strict-reset='True'"));
    // Another mode: replaced too, options as given.
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "auto-attach", ""),
    ));
    let list = assigned(&env, "work");
    assert!(
        list.contains("mode='auto-attach'") && !list.contains("no-strict-reset"),
        "{list}"
    );
    assert_eq!(env.dump()["assignments"].as_array().unwrap().len(), 1);
}

#[test]
fn modes_manual_refused_unknown_is_protocol_error() {
    let env = env();
    let (kind, msg) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "manual", ""),
    ));
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("required"), "{msg}");
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Assign", USB), b"mode='sometimes'"));
    assert_eq!(kind, "ProtocolError");
    for mode in ["required", "auto-attach", "ask-to-attach"] {
        let env = self::env();
        body_of(&env.call("dom0", "work", &m("Assign", USB), &payload(USB_ID, "00_14.0", mode, "")));
        assert!(assigned(&env, "work").contains(&format!("mode='{mode}'")));
    }
    assert!(!env.store_path().exists(), "refused calls write nothing");
}

#[test]
fn target_must_be_a_qube_that_can_take_pci_devices() {
    let env = env();
    let (kind, msg) = error_of(&env.call("dom0", "dom0", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesException");
    assert!(msg.contains("dom0"), "{msg}");
    let (kind, msg) = error_of(&env.call("dom0", "personal", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesException");
    assert!(
        msg.contains("pvh") && msg.contains("virt_mode hvm") && msg.contains("personal"),
        "{msg}"
    );
    let (kind, _) = error_of(&env.call("dom0", "nosuchqube", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesVMNotFoundError");
    assert!(!env.store_path().exists());
}

#[test]
fn device_must_exist_match_and_not_be_a_bridge() {
    let env = env();
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Assign", "dom0+00_15.0"), b"mode='required'"));
    assert_eq!(kind, "DeviceNotFound");
    assert!(msg.contains("00_15.0") && msg.contains("work"), "{msg}");
    let (kind, msg) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", "dom0+00_14.0+0x8086+0x9999++p0c0330"),
        b"mode='required'",
    ));
    assert_eq!(kind, "DeviceNotFound");
    assert!(msg.contains(USB_ID), "names the device that is there: {msg}");
    for bridge in ["dom0+00_00.0", "dom0+00_1c.0"] {
        let (kind, msg) = error_of(&env.call("dom0", "work", &m("Assign", bridge), b"mode='required'"));
        assert_eq!(kind, "QubesValueError");
        assert!(msg.contains("bridge"), "{msg}");
    }
    // A port-only assignment of a present device is fine, and so is a device behind a bridge.
    body_of(&env.call("dom0", "work", &m("Assign", "dom0+00_1f.6"), b"mode='required'"));
    body_of(&env.call("dom0", "sys-net", &m("Assign", WIFI), b"mode='required'"));
    assert!(assigned(&env, "work").contains("device_id='*' port_id='00_1f.6'"));
    // Another backend names no PCI device.
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Assign", "sys-usb+00_14.0"), b"mode='required'"));
    assert_eq!(kind, "DeviceNotFound");
}

#[test]
fn functions_of_one_device_go_to_one_qube_unless_all_have_no_strict_reset() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    let sib = payload("0x8086:0x8cb2::p118000", "00_14.2", "required", "");
    let (kind, msg) = error_of(&env.call("dom0", "sys-usb", &m("Assign", USB_SIBLING), &sib));
    assert_eq!(kind, "QubesValueError");
    assert!(
        msg.contains("00_14.2") && msg.contains("00_14.0") && msg.contains("work") && msg.contains("no-strict-reset"),
        "{msg}"
    );
    // Only one side with no-strict-reset is not enough.
    let sib_nsr = payload(
        "0x8086:0x8cb2::p118000",
        "00_14.2",
        "required",
        " _no-strict-reset='True'",
    );
    let (kind, _) = error_of(&env.call("dom0", "sys-usb", &m("Assign", USB_SIBLING), &sib_nsr));
    assert_eq!(kind, "QubesValueError");
    // Same qube: fine.
    body_of(&env.call("dom0", "work", &m("Assign", USB_SIBLING), &sib));
    body_of(&env.call("dom0", "work", &m("Unassign", USB_SIBLING), b""));
    // Both with no-strict-reset: fine.
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'"),
    ));
    body_of(&env.call("dom0", "sys-usb", &m("Assign", USB_SIBLING), &sib_nsr));
    // Dropping no-strict-reset from one of them again would split the device: refused.
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesValueError");
}

#[test]
fn options_only_known_names_and_true_false() {
    let env = env();
    let (kind, msg) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _identity='x'"),
    ));
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("no-strict-reset") && msg.contains("permissive"), "{msg}");
    let (kind, msg) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _permissive='yes'"),
    ));
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("True or False"), "{msg}");
    // False means off: nothing is stored or shown.
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _permissive='False'"),
    ));
    assert!(!assigned(&env, "work").contains("permissive"));
    assert_eq!(env.dump()["assignments"][0]["options"]["permissive"], false);
}

#[test]
fn options_need_their_own_grant_unless_from_dom0() {
    let env = env();
    let nsr = payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'");
    let (kind, msg) = error_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert_eq!(kind, "PermissionDenied");
    assert!(msg.contains("admin.vm.device.pci.Option+no-strict-reset"), "{msg}");
    assert!(!env.store_path().exists(), "nothing recorded");
    // Without the option the same caller may assign, then may not turn it on.
    body_of(&env.call("mgmt", "work", &m("Assign", USB), &required()));
    let (kind, _) = error_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert_eq!(kind, "PermissionDenied");
    let (kind, _) = error_of(&env.call(
        "mgmt",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _permissive='True'"),
    ));
    assert_eq!(kind, "PermissionDenied");
    assert!(!assigned(&env, "work").contains("_no-strict-reset"));
    // An ask rule does not grant an option: nobody is asked about it.
    env.write_policy(
        "20-opt.policy",
        "admin.vm.device.pci.Option +no-strict-reset mgmt @anyvm ask default_target=dom0\n",
    );
    let (kind, _) = error_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert_eq!(kind, "PermissionDenied");
    // An allow rule for this option (and this target) does.
    env.write_policy(
        "20-opt.policy",
        "admin.vm.device.pci.Option +no-strict-reset mgmt work allow target=dom0\n",
    );
    body_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert!(assigned(&env, "work").contains("_no-strict-reset='True'"));
    let (kind, _) = error_of(&env.call(
        "mgmt",
        "work",
        &m("Assign", USB),
        &payload(
            USB_ID,
            "00_14.0",
            "required",
            " _no-strict-reset='True' _permissive='True'",
        ),
    ));
    assert_eq!(kind, "PermissionDenied", "the grant is per option");
    // dom0 needs no grant.
    body_of(&env.call(
        "dom0",
        "sys-net",
        &m("Assign", NIC),
        &payload("0x8086:0x15a3::p020000", "00_1f.6", "required", " _permissive='True'"),
    ));
}

#[test]
fn shipped_policy_grants_no_option() {
    let env = TestEnv::new(FakeSysfs::standard());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/90-qubes-pci-admin.policy")).unwrap();
    env.write_policy("90-qubes-pci-admin.policy", &shipped);
    // A management qube with the usual admin-local-rwx grant.
    env.write_policy(
        "include/admin-local-rwx",
        "mgmt @tag:created-by-mgmt allow target=dom0\n",
    );
    env.write_policy("include/admin-local-ro", "!include include/admin-local-rwx\n");
    body_of(&env.call("mgmt", "work", &m("Assign", USB), &required()));
    let (kind, _) = error_of(&env.call(
        "mgmt",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'"),
    ));
    assert_eq!(kind, "PermissionDenied");
    for opt in ["no-strict-reset", "permissive"] {
        let out = env.cli(
            &[
                "policy",
                "eval",
                "mgmt",
                "work",
                &format!("admin.vm.device.pci.Option+{opt}"),
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn payload_must_agree_with_the_argument_and_destination() {
    let env = env();
    let (kind, _) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.2", "required", ""),
    ));
    assert_eq!(kind, "ProtocolError");
    let (kind, msg) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " frontend_domain='sys-net'"),
    ));
    assert_eq!(kind, "ProtocolError");
    assert!(msg.contains("sys-net") && msg.contains("work"), "{msg}");
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Assign", USB), b""));
    assert_eq!(kind, "ProtocolError", "Assign needs a payload");
    // A payload may narrow a port-only argument to a device id.
    body_of(&env.call("dom0", "work", &m("Assign", "dom0+00_14.0"), &required()));
    assert!(assigned(&env, "work").contains(&format!("dom0+00_14.0:{USB_ID}")));
}

#[test]
fn same_device_may_be_assigned_to_several_qubes() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    body_of(&env.call("dom0", "sys-usb", &m("Assign", USB), &required()));
    assert!(assigned(&env, "work").contains("00_14.0"));
    assert!(assigned(&env, "sys-usb").contains("00_14.0"));
}

#[test]
fn unassign_works_when_the_device_is_gone() {
    let mut env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", NIC),
        &payload("0x8086:0x15a3::p020000", "00_1f.6", "required", ""),
    ));
    env.sysfs.remove("0000:00:14.0");
    // Listing still shows it; a new Assign of it is refused; Unassign works.
    assert!(assigned(&env, "work").contains("00_14.0"));
    let (kind, _) = error_of(&env.call("dom0", "sys-usb", &m("Assign", USB), &required()));
    assert_eq!(kind, "DeviceNotFound");
    body_of(&env.call("dom0", "work", &m("Unassign", USB), b""));
    let left = assigned(&env, "work");
    assert!(!left.contains("00_14.0") && left.contains("00_1f.6"), "{left}");
    // Port only, as `qvm-pci unassign work dom0:00_1f.6` sends it.
    body_of(&env.call("dom0", "work", &m("Unassign", "dom0+00_1f.6"), b""));
    assert_eq!(assigned(&env, "work"), "");
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Unassign", USB), b""));
    assert_eq!(kind, "DeviceNotAssigned");
    assert!(msg.contains("not assigned to work"), "{msg}");
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Unassign", USB), b"x"));
    assert_eq!(kind, "ProtocolError", "Unassign takes no payload");
}

#[test]
fn set_assignment_changes_the_mode_and_keeps_options() {
    let env = env();
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'"),
    ));
    body_of(&env.call("mgmt", "work", &m("Set.assignment", USB), b"auto-attach"));
    let list = assigned(&env, "work");
    assert!(
        list.contains("mode='auto-attach'") && list.contains("_no-strict-reset='True'"),
        "{list}"
    );
    let generation = env.dump()["generation"].clone();
    body_of(&env.call("dom0", "work", &m("Set.assignment", USB), b"auto-attach"));
    assert_eq!(env.dump()["generation"], generation, "same mode: no write");
    for bad in [&b"manual"[..], b"True", b"required\n", b"Required"] {
        let (kind, _) = error_of(&env.call("dom0", "work", &m("Set.assignment", USB), bad));
        assert_eq!(kind, "QubesUnrecognizedDeviceAssignmentMode");
    }
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Set.assignment", NIC), b"required"));
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("not assigned to work"), "{msg}");
    // Denied callers change nothing.
    let (kind, _) = error_of(&env.call("work", "work", &m("Set.assignment", USB), b"required"));
    assert_eq!(kind, "PermissionDenied");
    assert!(assigned(&env, "work").contains("mode='auto-attach'"));
}

#[test]
fn policy_decides_who_assigns_where() {
    let env = env();
    body_of(&env.call("mgmt", "work", &m("Assign", USB), &required()));
    let (kind, _) = error_of(&env.call("mgmt", "sys-usb", &m("Assign", USB), &required()));
    assert_eq!(kind, "PermissionDenied", "sys-usb was not created by mgmt");
    let (kind, _) = error_of(&env.call("work", "work", &m("Unassign", USB), b""));
    assert_eq!(kind, "PermissionDenied");
    assert!(assigned(&env, "work").contains("00_14.0"));
    assert_eq!(env.dump()["generation"], 1);
}

#[test]
fn damaged_store_refuses_writes_and_reports_on_read() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    let mut bytes = std::fs::read(env.store_path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(env.store_path(), &bytes).unwrap();
    let (kind, msg) = error_of(&env.call(
        "dom0",
        "work",
        &m("Assign", NIC),
        &payload("0x8086:0x15a3::p020000", "00_1f.6", "required", ""),
    ));
    assert_eq!(kind, "QubesException");
    assert!(msg.contains("checksum") && msg.contains("move it aside"), "{msg}");
    let (kind, _) = error_of(&env.call("dom0", "work", "admin.vm.device.pci.Assigned", b""));
    assert_eq!(kind, "QubesException");
    assert_eq!(
        std::fs::read(env.store_path()).unwrap(),
        bytes,
        "the damaged file is left as it is"
    );
    let out = env.cli(&["store", "dump"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
}

#[test]
fn unknown_store_version_is_refused_not_reset() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    let mut bytes = std::fs::read(env.store_path()).unwrap();
    bytes[8..12].copy_from_slice(&9u32.to_le_bytes());
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let mut h = crc32fast::Hasher::new();
    h.update(&9u32.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(&bytes[20..]);
    bytes[16..20].copy_from_slice(&h.finalize().to_le_bytes());
    std::fs::write(env.store_path(), &bytes).unwrap();
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Unassign", USB), b""));
    assert_eq!(kind, "QubesException");
    assert!(msg.contains("newer"), "{msg}");
    assert_eq!(std::fs::read(env.store_path()).unwrap(), bytes);
}
