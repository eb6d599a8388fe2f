#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! `assign-defaults` and `import-qubes-xml` through the built binary.

mod common;

use common::{body_of, FakeDev, FakeSysfs, TestEnv};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assigned(env: &TestEnv, qube: &str) -> String {
    body_of(&env.call("dom0", qube, "admin.vm.device.pci.Assigned", b""))
}

#[test]
fn defaults_give_network_to_sys_net_and_usb_to_sys_usb() {
    let env = TestEnv::new(FakeSysfs::standard());
    let dry = env.cli(&["assign-defaults", "--dry-run"], b"");
    assert_eq!(dry.status.code(), Some(0));
    assert!(
        stdout(&dry).contains("would be assigned: dom0:00_1f.6"),
        "{}",
        stdout(&dry)
    );
    assert!(!env.store_path().exists(), "a dry run writes nothing");
    let out = env.cli(&["assign-defaults"], b"");
    assert_eq!(out.status.code(), Some(0));
    let report = stdout(&out);
    assert_eq!(report.lines().count(), 3, "{report}");
    let net = assigned(&env, "sys-net");
    assert!(
        net.contains("port_id='00_1f.6'") && net.contains("port_id='00_1c.0-00_00.0'"),
        "{net}"
    );
    assert!(
        net.contains("device_id='0x8086:0x15a3::p020000'"),
        "pinned to the device id: {net}"
    );
    let usb = assigned(&env, "sys-usb");
    assert!(usb.contains("port_id='00_14.0'") && !usb.contains("00_14.2"), "{usb}");
    assert!(!usb.contains("no-strict-reset"), "options are never set by default");
    assert_eq!(env.dump()["generation"], 1, "one write for all");
    // Again: nothing changes.
    let again = env.cli(&["assign-defaults"], b"");
    assert!(
        stdout(&again).lines().all(|l| l.starts_with("already assigned")),
        "{}",
        stdout(&again)
    );
    assert_eq!(env.dump()["generation"], 1);
}

#[test]
fn defaults_leave_existing_assignments_alone_and_check_the_qubes() {
    let env = TestEnv::new(FakeSysfs::standard());
    body_of(&env.call(
        "dom0",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
        b"mode='auto-attach'",
    ));
    let out = env.cli(&["assign-defaults", "--json"], b"");
    let lines: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let usb = lines
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["device"].as_str().unwrap().contains("00_14.0"))
        .unwrap();
    assert_eq!(usb["outcome"], "already assigned");
    assert_eq!(usb["detail"], "to work; left as it is");
    assert_eq!(assigned(&env, "sys-usb"), "");
    assert!(assigned(&env, "work").contains("mode='auto-attach'"));
    // Named qubes must exist and take PCI devices.
    let out = env.cli(&["assign-defaults", "--net", "nosuch"], b"");
    assert_eq!(out.status.code(), Some(1));
    let out = env.cli(&["assign-defaults", "--usb", "personal"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pvh"));
}

const QUBES_XML: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<qubes version="3.0">
  <domains>
    <domain id="domain-0" class="AdminVM">
      <properties><property name="name">dom0</property></properties>
    </domain>
    <domain id="domain-2" class="AppVM">
      <properties><property name="qid">2</property><property name="name">sys-net</property></properties>
      <devices class="pci">
        <device backend-domain="dom0" id="00_1f.6" mode="required" identity="0x8086:0x15a3::p020000">
          <option name="no-strict-reset">True</option>
        </device>
        <device backend-domain="dom0" id="02_00.0" required="True">
          <option name="identity">0x8086:0x08b1::p028000</option>
        </device>
      </devices>
      <devices class="usb">
        <device backend-domain="sys-usb" id="2-1" mode="auto-attach"/>
      </devices>
    </domain>
    <domain id="domain-3" class="DispVM">
      <properties><property name="name">sys-usb</property></properties>
      <devices class="pci">
        <device backend-domain="dom0" id="00_14.0" required="False"><option name="permissive">False</option></device>
        <device backend-domain="dom0" id="00_17.0"/>
        <device backend-domain="sys-net" id="00_14.2" mode="required"/>
        <device backend-domain="dom0" id="00_16.0" mode="sometimes"/>
        <device backend-domain="dom0" id="00_15.0" mode="manual"/>
      </devices>
    </domain>
    <domain id="domain-4" class="AppVM">
      <properties><property name="name">personal</property></properties>
      <devices class="pci"><device backend-domain="dom0" id="00_1f.3" mode="required"/></devices>
    </domain>
    <domain id="domain-5" class="AppVM">
      <properties><property name="name">gone</property></properties>
      <devices class="pci"><device backend-domain="dom0" id="00_1f.3" mode="required"/></devices>
    </domain>
  </domains>
</qubes>
"#;

#[test]
fn import_reads_current_and_legacy_forms_and_is_idempotent() {
    let env = TestEnv::new(FakeSysfs::standard());
    let file = env.dir.path().join("qubes.xml");
    std::fs::write(&file, QUBES_XML).unwrap();
    let out = env.cli(&["import-qubes-xml", file.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = stdout(&out);
    // Current form, with its option.
    let net = assigned(&env, "sys-net");
    assert!(
        net.contains("port_id='00_1f.6'") && net.contains("mode='required'") && net.contains("_no-strict-reset='True'"),
        "{net}"
    );
    // Legacy BDF 02_00.0 (behind the 00:1c.0 bridge) moved to its PCI path; legacy required= and identity option.
    assert!(net.contains("dom0+00_1c.0-00_00.0:0x8086:0x08b1::p028000"), "{net}");
    assert!(report.contains("legacy id 02_00.0"), "{report}");
    // required="False" means auto-attach; permissive False is off here.
    let usb = assigned(&env, "sys-usb");
    assert!(
        usb.contains("port_id='00_14.0'") && usb.contains("mode='auto-attach'") && !usb.contains("permissive"),
        "{usb}"
    );
    assert!(report.contains("qubesd treated any value as on"), "{report}");
    // No mode attribute means required; an absent device is imported with a note.
    assert!(
        usb.contains("port_id='00_17.0'") && usb.contains("device_id='*'"),
        "{usb}"
    );
    assert!(report.contains("not present"), "{report}");
    // Skipped, each with its reason.
    for why in ["is not dom0", "sometimes", "mode manual", "pvh", "does not exist"] {
        assert!(report.contains(why), "missing reason {why:?} in {report}");
    }
    assert!(!report.contains("2-1"), "USB-class devices are not PCI: {report}");
    assert!(report.ends_with("4 imported, 5 skipped\n"), "{report}");
    let generation = env.dump()["generation"].clone();
    // Again: everything is already there; nothing is written.
    let again = stdout(&env.cli(&["import-qubes-xml", file.to_str().unwrap()], b""));
    assert!(again.ends_with("0 imported, 9 skipped\n"), "{again}");
    assert_eq!(again.matches("already in the store").count(), 4, "{again}");
    assert_eq!(env.dump()["generation"], generation);
}

#[test]
fn import_applies_the_multi_function_rule_and_reports_bad_files() {
    let mut sys = FakeSysfs::new(&["0000:00"]);
    sys.add(FakeDev::new("0000:00:1f.0", 0x8086, 0x1, 0x060100))
        .add(FakeDev::new("0000:00:1f.6", 0x8086, 0x15a3, 0x020000));
    let env = TestEnv::new(sys);
    let file = env.dir.path().join("qubes.xml");
    std::fs::write(
        &file,
        r#"<qubes><domains>
        <domain><properties><property name="name">sys-net</property></properties>
          <devices class="pci"><device backend-domain="dom0" id="00_1f.6" mode="required"/></devices></domain>
        <domain><properties><property name="name">work</property></properties>
          <devices class="pci"><device backend-domain="dom0" id="00_1f.0" mode="required"/></devices></domain>
        </domains></qubes>"#,
    )
    .unwrap();
    let report = stdout(&env.cli(&["import-qubes-xml", file.to_str().unwrap()], b""));
    assert!(report.contains("imported sys-net dom0:00_1f.6"), "{report}");
    assert!(report.contains("skipped work dom0:00_1f.0: cannot assign"), "{report}");
    std::fs::write(&file, "<notqubes/>").unwrap();
    let out = env.cli(&["import-qubes-xml", file.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a qubes.xml"));
    let out = env.cli(&["import-qubes-xml", "/nonexistent/qubes.xml"], b"");
    assert_eq!(out.status.code(), Some(1));
}
