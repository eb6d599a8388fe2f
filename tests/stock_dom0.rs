#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The front door and the extension's check on the facts a stock R4.3 dom0
//! holds, as the stand-in now holds them: features as strings (`internal`
//! is "1" on default-mgmt-dvm), properties with their default flag (a fresh
//! qube's virt_mode is pvh by default), records made before the service was
//! installed (auto-attach, R4.2 BDF ports), option values stored as given.

mod common;

use common::{body_of, error_of, FakeDev, FakeSysfs, TestEnv};
use serde_json::{json, Value};

const NIC: &str = "dom0+00_1f.6+0x8086+0x15a3++p020000";
const USB: &str = "dom0+00_14.0+0x8086+0x8cb1++p0c0330";
const USB_PORT_ONLY: &str = "dom0+00_14.0+_";

fn m(method: &str, arg: &str) -> String {
    format!("admin.vm.device.pci.{method}+{arg}")
}

fn mgmt_env(sysfs: FakeSysfs, xml: &str) -> TestEnv {
    let env = TestEnv::with_qubes_xml(sysfs, xml);
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0\n\
         admin.vm.device.pci.Assign    * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Unassign  * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Assigned  * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Set.assignment * mgmt @tag:created-by-mgmt allow target=dom0\n",
    );
    env
}

fn check(env: &TestEnv, kind: &str, facts: &Value) -> Value {
    serde_json::from_slice(&env.cli(&["check", kind], facts.to_string().as_bytes()).stdout).unwrap()
}

/// Item 1: qubesd sends features as strings (`"internal": "1"` on
/// default-mgmt-dvm). The service reads them by truthiness instead of
/// failing every call, and the policy leaves internal qubes out of ask
/// prompts, as qrexec does.
#[test]
fn feature_strings_in_the_system_info_do_not_stop_the_service() {
    let env = mgmt_env(FakeSysfs::standard(), common::QUBES_XML);
    let info = env.qubesd("internal.GetSystemInfo", "", "dom0", b"");
    let info: Value = serde_json::from_slice(&info[2..]).unwrap();
    assert_eq!(
        info["domains"]["default-mgmt-dvm"]["internal"],
        json!("1"),
        "the stand-in sends what qubesd sends"
    );
    assert_eq!(info["domains"]["work"]["internal"], Value::Null);
    assert!(body_of(&env.call("mgmt", "@adminvm", "admin.vm.device.pci.Available", b"")).contains("00_14.0"));
    assert!(body_of(&env.call("dom0", "dom0", "admin.vm.device.pci.Available", b"")).contains("00_14.0"));
    env.write_policy(
        "40-ask.policy",
        "admin.vm.device.pci.Assigned * gui @anyvm ask default_target=work\n",
    );
    let out = env.cli(
        &[
            "policy",
            "eval",
            "--json",
            "gui",
            "work",
            "admin.vm.device.pci.Assigned",
        ],
        b"",
    );
    let eval: Value = serde_json::from_slice(&out.stdout).unwrap();
    let targets: Vec<&str> = eval["targets_for_ask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        targets.contains(&"work") && !targets.contains(&"default-mgmt-dvm"),
        "{targets:?}"
    );
}

/// Item 2: a qube whose virt_mode is qubesd's default (pvh until its first
/// PCI assignment) takes its first device, from a management qube and
/// from dom0; a pvh set on the qube itself is refused.
#[test]
fn a_fresh_qube_gets_its_first_pci_device() {
    let env = mgmt_env(FakeSysfs::standard(), common::QUBES_XML);
    assert_eq!(
        env.qubesd("admin.vm.property.Get", "virt_mode", "media", b""),
        b"0\0default=True type=str pvh",
        "the stand-in answers as qubesd does"
    );
    body_of(&env.call("mgmt", "media", &m("Assign", NIC), b"mode='required'"));
    assert_eq!(env.recorded().len(), 1);
    body_of(&env.call("dom0", "media", &m("Assign", USB), b"mode='required'"));
    assert_eq!(env.recorded().len(), 2);
    let (kind, msg) = error_of(&env.call("dom0", "personal", &m("Assign", NIC), b"mode='required'"));
    assert_eq!(kind, "QubesException");
    assert!(
        msg.contains("pvh") && msg.contains("qvm-prefs personal virt_mode hvm"),
        "{msg}"
    );
    assert_eq!(env.recorded().len(), 2);
}

/// Item 3: records made before the service was installed (stock
/// `qvm-pci assign` without --required makes auto-attach) may name a
/// bridge or a device dom0 uses; turning them into required meets every
/// rule an Assign meets, at the front door and in the extension.
#[test]
fn set_assignment_to_required_meets_every_assign_rule() {
    let xml = common::QUBES_XML.replace(
        r#"<property name="name">media</property><property name="uuid">7b0e9fae-df9c-4d8e-9ab7-8c6dcf7e4a07</property></properties>"#,
        r#"<property name="name">media</property><property name="uuid">7b0e9fae-df9c-4d8e-9ab7-8c6dcf7e4a07</property></properties>
        <devices class="pci">
          <device backend-domain="dom0" id="00_1c.0" mode="auto-attach" identity="0x8086:0x8c10::p060400"/>
          <device backend-domain="dom0" id="00_14.0" mode="auto-attach" identity="0x8086:0x8cb1::p0c0330"/>
          <device backend-domain="dom0" id="00_1f.6" mode="auto-attach" identity="0x8086:0x15a3::p020000"/>
        </devices>"#,
    );
    assert_ne!(xml, common::QUBES_XML);
    let mut sys = FakeSysfs::standard();
    sys.add(FakeDev::new("0000:00:02.0", 0x8086, 0x0166, 0x030000));
    let env = mgmt_env(sys, &xml);
    env.sysfs.add_input("0000:00:14.0", "input3");
    let before = env.qubes_xml_bytes();
    let set = |port: &str, source: &str| error_of(&env.call(source, "media", &m("Set.assignment", port), b"required"));
    let (kind, msg) = set("dom0+00_1c.0+_", "mgmt");
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("bridge"), "{msg}");
    let (kind, msg) = set("dom0+00_1c.0+_", "dom0");
    assert!(kind == "QubesValueError" && msg.contains("bridge"), "dom0 too: {msg}");
    let (kind, msg) = set("dom0+00_14.0+_", "mgmt");
    assert!(
        kind == "QubesValueError" && msg.contains("input"),
        "dom0 uses it: {msg}"
    );
    assert_eq!(env.qubes_xml_bytes(), before, "nothing changed");
    body_of(&env.call("mgmt", "media", &m("Set.assignment", "dom0+00_1f.6+_"), b"required"));
    assert!(env
        .recorded()
        .iter()
        .any(|e| e.id == "00_1f.6" && e.mode.as_deref() == Some("required")));
    // Straight to qubesd: the extension's check says the same.
    let facts = |port: &str, source: &str| {
        json!({"source": source, "dest": "media", "dest_virt_mode": "hvm", "dest_virt_mode_default": true,
               "device": {"port": port}, "mode": "required",
               "assignments": [{"qube": "media", "port": port, "mode": "auto-attach"}]})
    };
    let v = check(&env, "set-mode", &facts("00_1c.0", "dom0"));
    assert_eq!(v["exception"], "QubesValueError", "{v}");
    assert!(v["message"].as_str().unwrap().contains("bridge"));
    let v = check(&env, "set-mode", &facts("00_14.0", "mgmt"));
    assert_eq!(v["exception"], "QubesValueError", "{v}");
    assert_eq!(check(&env, "set-mode", &facts("00_1f.6", "mgmt")), json!({"ok": true}));
}

/// Item 4: a deny rule on one spelling of a device holds for the other:
/// port only against port + device id, both ways, for Assign and Unassign
/// (where the id is the stored one).
#[test]
fn a_deny_on_one_spelling_holds_for_the_other() {
    let env = mgmt_env(FakeSysfs::standard(), common::QUBES_XML);
    let allow = "admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n\
                 admin.vm.device.pci.Unassign * mgmt @anyvm allow target=dom0\n";
    for (denied, called) in [(USB, USB_PORT_ONLY), (USB_PORT_ONLY, USB), (USB, "dom0+00_14.0")] {
        env.write_policy(
            "20-deny.policy",
            &format!("admin.vm.device.pci.Assign +{denied} mgmt @anyvm deny\n{allow}"),
        );
        let (kind, _) = error_of(&env.call("mgmt", "media", &m("Assign", called), b"mode='required'"));
        assert_eq!(kind, "QubesDaemonAccessError", "deny {denied}, called {called}");
        assert!(env.recorded().is_empty());
    }
    // Unassign: the stored assignment is pinned to the id; a deny on it
    // holds for a port-only call, and the other way round.
    body_of(&env.call("dom0", "media", &m("Assign", USB), b"mode='required'"));
    for (denied, called) in [(USB, USB_PORT_ONLY), (USB_PORT_ONLY, USB)] {
        env.write_policy(
            "20-deny.policy",
            &format!("admin.vm.device.pci.Unassign +{denied} mgmt @anyvm deny\n{allow}"),
        );
        let (kind, _) = error_of(&env.call("mgmt", "media", &m("Unassign", called), b""));
        assert_eq!(kind, "QubesDaemonAccessError", "deny {denied}, called {called}");
        assert_eq!(env.recorded().len(), 1);
    }
    // Another device is not concerned.
    env.write_policy(
        "20-deny.policy",
        &format!("admin.vm.device.pci.Assign +{USB} mgmt @anyvm deny\n{allow}"),
    );
    body_of(&env.call("mgmt", "media", &m("Assign", "dom0+00_1f.6+_"), b"mode='required'"));
    // lint points out allow rules that name a device by one spelling only.
    env.write_policy(
        "20-deny.policy",
        &format!("admin.vm.device.pci.Assign +{USB} mgmt @anyvm allow target=dom0\n"),
    );
    let out = env.cli(&["policy", "lint"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20-deny.policy:1: warning") && err.contains("one spelling"),
        "{err}"
    );
}

/// Item 5: an option value other than `True` sent straight to qubesd would
/// be stored and turn the option on; the extension refuses it and says how
/// to leave the option off.
#[test]
fn option_values_other_than_true_are_refused_by_the_extension() {
    let env = mgmt_env(FakeSysfs::standard(), common::QUBES_XML);
    for value in ["False", "0", "no"] {
        let v = check(
            &env,
            "assign",
            &json!({"dest": "work", "dest_virt_mode": "hvm", "device": {"port": "00_1f.6"},
                    "mode": "required", "options": {"permissive": value}}),
        );
        assert_eq!(v["exception"], "QubesValueError", "{value}: {v}");
        assert!(v["message"].as_str().unwrap().contains("leave the option out"), "{v}");
    }
    // The front door takes False as off and sends no option at all.
    body_of(&env.call(
        "dom0",
        "work",
        &m("Assign", NIC),
        b"mode='required' _permissive='False'",
    ));
    let rec = env.recorded();
    assert!(rec[0].options.is_empty(), "{rec:?}");
}

/// Item 7: a qubes.xml written by R4.2 has BDF port ids (`02_00.0` for the
/// device behind the bridge at 00:1c.0). They are read as qubesd holds them
/// once loaded, as the PCI path `00_1c.0-00_00.0`: in the listing, in the
/// sibling check, and for Unassign.
#[test]
fn legacy_bdf_records_are_read_as_qubesd_loads_them() {
    let mut sys = FakeSysfs::standard();
    sys.add(FakeDev::new("0000:02:00.1", 0x8086, 0x08b2, 0x028000).behind("0000:00:1c.0"));
    let xml = common::QUBES_XML.replace(
        r#"<property name="name">sys-net</property><property name="uuid">1b5e3a48-7f3c-4d2e-9a51-2c0d6f1e8a01</property><property name="virt_mode">hvm</property></properties>"#,
        r#"<property name="name">sys-net</property><property name="uuid">1b5e3a48-7f3c-4d2e-9a51-2c0d6f1e8a01</property><property name="virt_mode">hvm</property></properties>
        <devices class="pci"><device backend-domain="dom0" id="02_00.0" required="True"><option name="identity">0x8086:0x08b1::p028000</option></device></devices>"#,
    );
    let env = mgmt_env(sys, &xml);
    let listed = body_of(&env.call("dom0", "sys-net", "admin.vm.device.pci.Assigned", b""));
    assert!(
        listed.starts_with("dom0+00_1c.0-00_00.0:0x8086:0x08b1::p028000 "),
        "{listed}"
    );
    assert!(
        listed.contains("port_id='00_1c.0-00_00.0'") && listed.contains("mode='required'"),
        "{listed}"
    );
    // The other function of the same card, to another qube: refused.
    let (kind, msg) = error_of(&env.call(
        "mgmt",
        "media",
        &m("Assign", "dom0+00_1c.0-00_00.1"),
        b"mode='required'",
    ));
    assert_eq!(kind, "QubesValueError");
    assert!(msg.contains("same physical device") && msg.contains("sys-net"), "{msg}");
    // Unassign by the path reaches the stored record.
    body_of(&env.call("dom0", "sys-net", &m("Unassign", "dom0+00_1c.0-00_00.0"), b""));
    assert!(env.recorded().is_empty());
}
