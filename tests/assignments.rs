#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The write methods and the passthrough rules at assignment, end to end
//! through the built binary and the qubesd stand-in: what passes the rules
//! reaches qubesd as one canonical request and lands in its qubes.xml; what
//! does not changes nothing there.

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
    // qubesd holds them: in qubes.xml, as qubesd writes them.
    let rec = env.recorded();
    assert_eq!(rec.len(), 2);
    assert_eq!(
        (
            rec[0].qube.as_str(),
            rec[0].id.as_str(),
            rec[0].mode.as_deref(),
            rec[0].identity.as_deref()
        ),
        ("sys-net", "00_1f.6", Some("required"), Some("0x8086:0x15a3::p020000"))
    );
    // One canonical request each: argument with the device id, payload
    // with frontend_domain, as dom0.
    let w = env.qubesd_writes();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0]["arg"], USB);
    assert_eq!(w[0]["source"], "dom0");
    assert_eq!(
        w[0]["payload"],
        format!(
            "device_id='{USB_ID}' port_id='00_14.0' devclass='pci' backend_domain='dom0' mode='required' \
             frontend_domain='work'"
        )
    );
    // A dom0 tool's change (qvm-pci in dom0, straight to qubesd) is seen at once.
    assert_eq!(env.qubesd("admin.vm.device.pci.Unassign", NIC, "sys-net", b""), b"0\0");
    assert_eq!(assigned(&env, "sys-net"), "");
}

#[test]
fn identical_assign_is_already_assigned_and_other_options_replace_it() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    let before = env.qubes_xml_bytes();
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    assert_eq!(
        kind, "DeviceAlreadyAssigned",
        "qubesd's own refusal, relayed with its name"
    );
    assert!(msg.contains("already assigned to work"), "{msg}");
    assert_eq!(env.qubes_xml_bytes(), before, "an identical Assign changes nothing");
    // Other options: qubesd has no call for it, so unassign + assign; still
    // one assignment.
    let with_nsr = payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'");
    body_of(&env.call("dom0", "work", &m("Assign", USB), &with_nsr));
    let rec = env.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].options, vec![("no-strict-reset".to_owned(), "True".to_owned())]);
    let methods: Vec<String> = env
        .qubesd_writes()
        .iter()
        .map(|w| w["method"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        methods,
        ["Assign", "Assign", "Unassign", "Assign"].map(|v| format!("admin.vm.device.pci.{v}"))
    );
}

#[test]
fn a_failed_option_change_restores_the_old_assignment() {
    let env = env();
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    // qubesd refuses the second step (the stand-in is told to).
    assert_eq!(
        env.qubesd("standin.FailNext", "admin.vm.device.pci.Assign", "dom0", b""),
        b"0\0"
    );
    let with_nsr = payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'");
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Assign", USB), &with_nsr));
    assert_eq!((kind.as_str(), msg.as_str()), ("QubesException", "injected failure"));
    let rec = env.recorded();
    assert_eq!(rec.len(), 1, "the old assignment is back");
    assert!(rec[0].options.is_empty());
    assert_eq!(rec[0].mode.as_deref(), Some("required"));
}

/// qubesd may take longer than the deadline to answer a change it has
/// made (its extension's check is slow, dom0 is busy): the caller is told
/// the change may or may not have taken effect, never that nothing changed.
#[test]
fn a_late_answer_is_not_reported_as_nothing_changed() {
    let env = env();
    let late = |method: &str| {
        assert_eq!(
            env.qubesd(
                "standin.FailNext",
                &format!("admin.vm.device.pci.{method}=late"),
                "dom0",
                b""
            ),
            b"0\0"
        );
    };
    let short = [("QUBES_PCI_ADMIN_QUBESD_TIMEOUT_MS", "500")];
    late("Assign");
    let (kind, msg) = error_of(&env.call_with(&short, "dom0", "work", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesException");
    assert!(
        msg.contains("may or may not have taken effect") && msg.contains("qvm-pci list"),
        "{msg}"
    );
    assert!(!msg.contains("nothing was changed"), "{msg}");
    assert_eq!(env.recorded().len(), 1, "qubesd did it");
    // An option change whose Unassign is answered late: what qubesd holds
    // is read again, the Unassign was done, so the new assignment follows.
    late("Unassign");
    let with_nsr = payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'");
    let out = env.call_with(&short, "dom0", "work", &m("Assign", USB), &with_nsr);
    body_of(&out);
    let rec = env.recorded();
    assert_eq!(rec.len(), 1, "never without an assignment: {rec:?}");
    assert_eq!(rec[0].options, vec![("no-strict-reset".to_owned(), "True".to_owned())]);
    // One whose new Assign is answered late: it was done, so it succeeded.
    late("Assign");
    body_of(&env.call_with(&short, "dom0", "work", &m("Assign", USB), &required()));
    let rec = env.recorded();
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert!(rec[0].options.is_empty());
}

#[test]
fn only_required_is_accepted_unknown_is_protocol_error() {
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
    // qubesd hands a qube only its required PCI devices: other modes would
    // be recorded and never take effect.
    for mode in ["auto-attach", "ask-to-attach"] {
        let (kind, msg) = error_of(&env.call("dom0", "work", &m("Assign", USB), &payload(USB_ID, "00_14.0", mode, "")));
        assert_eq!(kind, "QubesValueError");
        assert!(msg.contains("--required"), "{msg}");
    }
    assert!(env.recorded().is_empty(), "refused calls change nothing");
    assert!(env.qubesd_writes().is_empty(), "and never reach qubesd");
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
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
    assert!(env.qubesd_writes().is_empty());
    // virt_mode comes from qubesd at the moment of the call.
    env.set_prop("work", "virt_mode", "pvh");
    let (kind, _) = error_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesException");
    env.set_prop("work", "virt_mode", "hvm");
    body_of(&env.call("dom0", "work", &m("Assign", USB), &required()));
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
    assert!(
        env.recorded()[0].options.is_empty(),
        "False is never passed on: upstream would turn it on"
    );
}

#[test]
fn options_need_their_own_grant_unless_from_dom0() {
    let env = env();
    let nsr = payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'");
    let (kind, msg) = error_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert_eq!(kind, "QubesDaemonAccessError");
    assert!(msg.contains("admin.vm.device.pci.Option+no-strict-reset"), "{msg}");
    assert!(env.recorded().is_empty(), "nothing recorded");
    // Without the option the same caller may assign, then may not turn it on.
    body_of(&env.call("mgmt", "work", &m("Assign", USB), &required()));
    let (kind, _) = error_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert_eq!(kind, "QubesDaemonAccessError");
    let (kind, _) = error_of(&env.call(
        "mgmt",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _permissive='True'"),
    ));
    assert_eq!(kind, "QubesDaemonAccessError");
    assert!(!assigned(&env, "work").contains("_no-strict-reset"));
    // An ask rule does not grant an option: nobody is asked about it.
    env.write_policy(
        "20-opt.policy",
        "admin.vm.device.pci.Option +no-strict-reset mgmt @anyvm ask default_target=dom0\n",
    );
    let (kind, _) = error_of(&env.call("mgmt", "work", &m("Assign", USB), &nsr));
    assert_eq!(kind, "QubesDaemonAccessError");
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
    assert_eq!(kind, "QubesDaemonAccessError", "the grant is per option");
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
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/85-qubes-pci-admin.policy")).unwrap();
    env.write_policy("85-qubes-pci-admin.policy", &shipped);
    env.write_policy(
        "90-admin-default.policy",
        include_str!("data/policy/90-admin-default.policy"),
    );
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
    assert_eq!(kind, "QubesDaemonAccessError");
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
    assert_eq!(kind, "DeviceNotAssigned", "qubesd's answer, relayed");
    assert!(msg.contains("not assigned to work"), "{msg}");
    // The canonical request carries the stored identity, even for a port-only argument.
    let unassigns: Vec<serde_json::Value> = env
        .qubesd_writes()
        .into_iter()
        .filter(|w| w["method"] == "admin.vm.device.pci.Unassign")
        .collect();
    assert_eq!(unassigns[1]["arg"], NIC);
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
    // A dom0 tool made it auto-attach (qubesd alone, no rules).
    assert_eq!(
        env.qubesd("admin.vm.device.pci.Set.assignment", USB, "work", b"auto-attach"),
        b"0\0"
    );
    let (kind, _) = error_of(&env.call("mgmt", "work", &m("Set.assignment", USB), b"ask-to-attach"));
    assert_eq!(kind, "QubesValueError", "only required takes effect for PCI");
    body_of(&env.call("mgmt", "work", &m("Set.assignment", "dom0+00_14.0"), b"required"));
    let list = assigned(&env, "work");
    assert!(
        list.contains("mode='required'") && list.contains("_no-strict-reset='True'"),
        "{list}"
    );
    // And an Assign of the same device and options with mode required is one Set.assignment.
    assert_eq!(
        env.qubesd("admin.vm.device.pci.Set.assignment", USB, "work", b"auto-attach"),
        b"0\0"
    );
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", USB),
        &payload(USB_ID, "00_14.0", "required", " _no-strict-reset='True'"),
    ));
    let last = env.qubesd_writes().pop().unwrap();
    assert_eq!(
        (last["method"].as_str(), last["payload"].as_str()),
        (Some("admin.vm.device.pci.Set.assignment"), Some("required"))
    );
    for bad in [&b"manual"[..], b"True", b"required\n", b"Required"] {
        let (kind, _) = error_of(&env.call("dom0", "work", &m("Set.assignment", USB), bad));
        assert_eq!(kind, "QubesUnrecognizedDeviceAssignmentMode");
    }
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Set.assignment", NIC), b"required"));
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("not assigned to work"), "{msg}");
    // Denied callers change nothing.
    let (kind, _) = error_of(&env.call("work", "work", &m("Set.assignment", USB), b"required"));
    assert_eq!(kind, "QubesDaemonAccessError");
    assert!(assigned(&env, "work").contains("mode='required'"));
}

#[test]
fn policy_decides_who_assigns_where() {
    let env = env();
    body_of(&env.call("mgmt", "work", &m("Assign", USB), &required()));
    let (kind, _) = error_of(&env.call("mgmt", "sys-usb", &m("Assign", USB), &required()));
    assert_eq!(kind, "QubesDaemonAccessError", "sys-usb was not created by mgmt");
    let (kind, _) = error_of(&env.call("work", "work", &m("Unassign", USB), b""));
    assert_eq!(kind, "QubesDaemonAccessError");
    assert!(assigned(&env, "work").contains("00_14.0"));
    assert_eq!(env.qubesd_writes().len(), 1);
}

#[test]
fn qubesd_failures_are_typed_replies_that_leak_nothing() {
    let mut env = env();
    // qubesd closes without an answer (upstream does on a plain Python exception).
    assert_eq!(
        env.qubesd("standin.FailNext", "admin.vm.device.pci.Unassign=silent", "dom0", b""),
        b"0\0"
    );
    let (kind, msg) = error_of(&env.call("dom0", "work", &m("Unassign", USB), b""));
    assert_eq!(kind, "QubesException");
    assert!(msg.contains("qubesd") && !msg.contains('/'), "{msg}");
    // qubesd is gone: every call that needs it gets a typed reply naming no path.
    env.stop_standin();
    for (source, method, payload) in [
        ("dom0", m("Assign", USB), required()),
        ("mgmt", m("Assigned", ""), vec![]),
        ("dom0", m("Unassign", USB), vec![]),
    ] {
        let (kind, msg) = error_of(&env.call(source, "work", &method, &payload));
        assert_eq!(kind, "QubesException", "{method}: {msg}");
        assert!(msg.contains("qubesd") && msg.contains("Try again"), "{msg}");
        assert!(!msg.contains('/'), "no dom0 path in {msg}");
    }
}
