#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! `preflight`, `hide-list` and `reconcile` on the stand-in, with a
//! qubes.xml holding each case: missing, replaced and moved devices, no
//! reset method (absent or empty, with and without no-strict-reset), a
//! shared function, a device in use, a duplicate, an explicit pvh, dom0's
//! console GPU and a big HVM; and the rules they share with Assign
//! (duplicates, `devices_denied`).

mod common;

use common::{body_of, error_of, FakeDev, FakeSysfs, TestEnv};
use serde_json::{json, Value};

const NIC_ID: &str = "0x8086:0x15a3::p020000";

/// One `<domain>`: properties, and PCI devices `(port, identity, mode,
/// options)`.
fn qube(id: usize, name: &str, props: &[(&str, &str)], devices: &[(&str, &str, &str, &str)]) -> String {
    let props: String = props
        .iter()
        .map(|(k, v)| format!("<property name=\"{k}\">{v}</property>"))
        .collect();
    let devs: String = devices
        .iter()
        .map(|(port, identity, mode, opts)| {
            let opts: String = opts
                .split_whitespace()
                .map(|o| format!("<option name=\"{o}\">True</option>"))
                .collect();
            format!(
                "<device backend-domain=\"dom0\" id=\"{port}\" mode=\"{mode}\" identity=\"{identity}\">{opts}</device>"
            )
        })
        .collect();
    format!(
        "<domain id=\"domain-{id}\" class=\"AppVM\"><properties><property name=\"name\">{name}</property>{props}</properties>\
         <tags/><devices class=\"pci\">{devs}</devices></domain>\n"
    )
}

fn world() -> FakeSysfs {
    let mut s = FakeSysfs::standard();
    // dom0's console GPU; a controller whose reset_method is empty; an
    // audio device and a USB controller nothing else shares a slot with.
    s.add(FakeDev::new("0000:00:02.0", 0x8086, 0x0166, 0x030000));
    s.add(FakeDev::new("0000:00:1a.0", 0x8086, 0x8c2d, 0x0c0320).reset(Some("")));
    s.add(FakeDev::new("0000:00:1b.0", 0x8086, 0x8c20, 0x040300));
    s.add(FakeDev::new("0000:00:1d.0", 0x8086, 0x8c26, 0x0c0320));
    s.set_boot_vga("0000:00:02.0");
    s
}

fn env() -> TestEnv {
    let hvm = [("virt_mode", "hvm")];
    let xml = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n<qubes><domains>\n\
         <domain id=\"domain-0\" class=\"AdminVM\"><properties><property name=\"name\">dom0</property></properties><tags/></domain>\n\
         {}{}{}{}{}{}{}{}{}{}{}{}{}{}</domains></qubes>\n",
        qube(1, "fine", &hvm, &[("0001_00_02.0", "0x144d:0xa808::p010802", "required", "")]),
        // nothing at 00_15.0, and the NIC's identity is at 00_1f.6 now
        qube(2, "moved", &hvm, &[("00_15.0", NIC_ID, "required", "no-strict-reset")]),
        qube(3, "gone", &hvm, &[("00_16.0", "0x1234:0x5678::p020000", "required", "")]),
        qube(4, "replaced", &hvm, &[("00_1c.0-00_00.0", "0x1234:0x9999::p028000", "required", "")]),
        qube(5, "noreset", &hvm, &[("00_1f.6", NIC_ID, "required", ""), ("00_1a.0", "*", "required", "")]),
        qube(6, "nsr", &hvm, &[("00_1f.6", NIC_ID, "required", "no-strict-reset")]),
        qube(7, "shared", &hvm, &[("00_14.2", "*", "required", "")]),
        qube(8, "holder", &hvm, &[("00_14.0", "*", "required", "")]),
        qube(9, "second", &hvm, &[("00_14.0", "*", "required", "")]),
        qube(10, "twice", &hvm, &[("00_1b.0", "*", "required", ""), ("00_1b.0", "0x8086:0x8c20::p040300", "required", "")]),
        qube(11, "pvhq", &[("virt_mode", "pvh")], &[("0001_00_02.0", "*", "required", "")]),
        qube(12, "gpu", &hvm, &[("00_02.0", "*", "required", "")]),
        qube(13, "big", &[("virt_mode", "hvm"), ("memory", "8000")], &[("0001_00_02.0", "*", "required", "")]),
        qube(14, "work", &hvm, &[]),
    );
    let env = TestEnv::with_qubes_xml(world(), &xml);
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n",
    );
    env
}

fn preflight(env: &TestEnv, qube: &str) -> (Option<i32>, Value) {
    let out = env.cli(&["preflight", "--json", qube], b"");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{qube}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// `(code, severity, device)` of each problem.
fn codes(v: &Value) -> Vec<(String, String, Option<String>)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap().to_owned(),
                p["severity"].as_str().unwrap().to_owned(),
                p["device"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn has(v: &Value, code: &str, severity: &str, device: Option<&str>) -> bool {
    codes(v)
        .iter()
        .any(|(c, s, d)| c == code && s == severity && d.as_deref() == device)
}

#[test]
fn preflight_names_every_problem_with_its_code() {
    let env = env();
    std::fs::write(
        env.dir.path().join("proc/cmdline"),
        "ro quiet rd.qubes.hide_pci=0001_00_02.0\n",
    )
    .unwrap();
    let (code, v) = preflight(&env, "fine");
    assert_eq!((code, v["starts"].clone()), (Some(0), json!(true)), "{v}");
    assert_eq!(codes(&v), Vec::new(), "hidden and present: {v}");
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        ("moved", "device-missing", "error", Some("dom0:00_15.0")),
        ("gone", "device-missing", "error", Some("dom0:00_16.0")),
        ("replaced", "identity-mismatch", "error", Some("dom0:00_1c.0-00_00.0")),
        ("noreset", "no-reset", "error", Some("dom0:00_1f.6")),
        ("noreset", "no-reset", "error", Some("dom0:00_1a.0")),
        ("shared", "shared-function", "warning", Some("dom0:00_14.2")),
        ("second", "shared-function", "warning", Some("dom0:00_14.0")),
        ("twice", "duplicate", "error", Some("dom0:00_1b.0")),
        ("pvhq", "pvh", "error", None),
        ("gpu", "dom0-uses", "warning", Some("dom0:00_02.0")),
        ("big", "memory-over-3.5g", "warning", None),
        ("gpu", "not-hidden", "warning", Some("dom0:00_02.0")),
    ];
    for (qube, problem, severity, device) in cases {
        let (code, v) = preflight(&env, qube);
        assert!(has(&v, problem, severity, *device), "{qube}: {v:#}");
        let starts = !codes(&v).iter().any(|(_, s, _)| s == "error");
        assert_eq!(v["starts"], json!(starts), "{qube}: {v}");
        assert_eq!(code, Some(if starts { 0 } else { 1 }), "{qube}: {v}");
        assert_eq!(v["qube"], json!(qube));
    }
    // no-strict-reset: no no-reset problem.
    let (code, v) = preflight(&env, "nsr");
    assert!(!has(&v, "no-reset", "error", Some("dom0:00_1f.6")), "{v}");
    assert_eq!(code, Some(0), "{v}");
    // The network controller is hidden by dracut on its own (class 0x02).
    assert!(!has(&v, "not-hidden", "warning", Some("dom0:00_1f.6")), "{v}");
    // In use: holder runs with 00_14.0, which second requires too.
    env.set_power("holder", "Running");
    let (code, v) = preflight(&env, "second");
    assert!(has(&v, "in-use", "error", Some("dom0:00_14.0")), "{v}");
    assert_eq!(code, Some(1));
    // A shared function of a running qube's device: an error now.
    let (_, v) = preflight(&env, "shared");
    assert!(has(&v, "shared-function", "error", Some("dom0:00_14.2")), "{v}");
    // The same judgement refuses the start (the stand-in asks the check).
    let refused = String::from_utf8_lossy(&env.qubesd("admin.vm.Start", "", "second", b"")).into_owned();
    assert!(refused.contains("in use by holder"), "{refused}");
    let refused = String::from_utf8_lossy(&env.qubesd("admin.vm.Start", "", "noreset", b"")).into_owned();
    assert!(refused.contains("no reset method"), "{refused}");
    // Text mode: one line per problem, saying what to do.
    let out = env.cli(&["preflight", "noreset"], b"");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("error: [no-reset]") && text.contains("no-strict-reset=True"),
        "{text}"
    );
    // Cannot tell: an unknown qube.
    let out = env.cli(&["preflight", "nosuch"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}

#[test]
fn hide_list_prints_and_checks_every_form() {
    let env = env();
    let out = env.cli(&["hide-list"], b"");
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Present devices with a required assignment whose identity matches:
    // not moved/gone/replaced ones.
    let listed: Vec<&str> = line.strip_prefix("rd.qubes.hide_pci=").unwrap().split(',').collect();
    let wanted = [
        "0001_00_02.0",
        "00_02.0",
        "00_14.0",
        "00_14.2",
        "00_1a.0",
        "00_1b.0",
        "00_1f.6",
    ];
    assert_eq!(listed, wanted, "{line}");
    let cmdline = |c: &str| std::fs::write(env.dir.path().join("proc/cmdline"), format!("{c}\n")).unwrap();
    // Each form dracut accepts: PCI paths, SBDF, BDF, plus the network
    // controllers it hides by itself (00_1f.6 is left to that).
    let all = "00_14.0,00_14.2,00_1a.0,00_1b.0,0001_00_02.0,00_02.0";
    for form in [
        all.to_owned(),
        "0000:00:14.0,0000:00:14.2,0000:00:1a.0,0000:00:1b.0,0001:00:02.0,0000:00:02.0".to_owned(),
        "00:14.0,00:14.2,00:1a.0,00:1b.0,0001:00:02.0,00:02.0".to_owned(),
    ] {
        cmdline(&format!("ro rd.qubes.hide_pci={form} quiet"));
        let out = env.cli(&["hide-list", "--check"], b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{form}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A bridge path, resolved through the bridge's secondary bus: hiding
    // the wifi nobody requires (replaced's record names another device).
    cmdline(&format!("rd.qubes.hide_pci={all},00_1c.0-00_00.0"));
    let out = env.cli(&["hide-list", "--check"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hidden but not assigned: 00_1c.0-00_00.0 (0000:02:00.0)"),
        "{text}"
    );
    // USB controllers through rd.qubes.hide_all_usb (00_14.0, 00_1a.0 and
    // 00_1d.0 by their class); dom0_usb keeps one in dom0.
    cmdline("rd.qubes.hide_pci=00_14.2,00_1b.0,0001_00_02.0,00_02.0 rd.qubes.hide_all_usb");
    assert_eq!(env.cli(&["hide-list", "--check"], b"").status.code(), Some(0));
    cmdline("rd.qubes.hide_pci=00_14.2,00_1b.0,0001_00_02.0,00_02.0 rd.qubes.hide_all_usb rd.qubes.dom0_usb=00:14.0");
    let out = env.cli(&["hide-list", "--check"], b"");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("assigned but not hidden: dom0:00_14.0"), "{text}");
    // Hidden but not assigned, and an entry naming nothing present.
    cmdline(&format!("rd.qubes.hide_pci={all},00_1f.3,00:15.0"));
    let out = env.cli(&["hide-list", "--check"], b"");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hidden but not assigned: 00_1f.3 (0000:00:1f.3)"),
        "{text}"
    );
    assert!(
        text.contains("hidden but not assigned: 00:15.0 names no device present"),
        "{text}"
    );
    assert!(text.contains(&line), "the option to use: {text}");
}

#[test]
fn reconcile_finds_moved_replaced_and_gone_and_repoints_only_when_asked() {
    let env = env();
    let out = env.cli(&["reconcile", "--json"], b"");
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut changes: Vec<(String, String, String, Value)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["qube"].as_str().unwrap().to_owned(),
                c["kind"].as_str().unwrap().to_owned(),
                c["port"].as_str().unwrap().to_owned(),
                c["now_at"].clone(),
            )
        })
        .collect();
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        changes,
        [
            ("gone".to_owned(), "gone".to_owned(), "00_16.0".to_owned(), Value::Null),
            (
                "moved".to_owned(),
                "moved".to_owned(),
                "00_15.0".to_owned(),
                json!("00_1f.6")
            ),
            (
                "replaced".to_owned(),
                "replaced".to_owned(),
                "00_1c.0-00_00.0".to_owned(),
                Value::Null
            ),
        ],
        "assignments that match their device are not listed: {v:#}"
    );
    assert!(env.qubesd_writes().is_empty(), "without --apply nothing changes");
    let text = String::from_utf8_lossy(&env.cli(&["reconcile"], b"").stdout).into_owned();
    assert!(text.contains("qvm-pci unassign gone dom0:00_16.0"), "{text}");
    assert!(
        text.contains("qvm-pci unassign replaced dom0:00_1c.0-00_00.0"),
        "{text}"
    );
    // --apply re-points the moved one (mode and options kept) and removes
    // nothing else.
    let out = env.cli(&["reconcile", "--apply"], b"");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("re-pointed"), "{text}");
    let moved: Vec<_> = env.recorded().into_iter().filter(|e| e.qube == "moved").collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        (moved[0].id.as_str(), moved[0].identity.as_deref()),
        ("00_1f.6", Some(NIC_ID))
    );
    assert_eq!(
        moved[0].options,
        vec![("no-strict-reset".to_owned(), "True".to_owned())]
    );
    assert!(
        env.recorded().iter().any(|e| e.qube == "gone"),
        "gone is left to the user"
    );
    let out = env.cli(&["reconcile", "--json"], b"");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 2);
}

#[test]
fn the_same_device_twice_in_one_qube_is_refused_at_assign() {
    let env = env();
    // work gets the NIC by port alone; then pinned, and the other way.
    body_of(&env.call(
        "mgmt",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_1b.0+_",
        b"mode='required'",
    ));
    let (kind, msg) = error_of(&env.call(
        "mgmt",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_1b.0+0x8086+0x8c20++p040300",
        b"mode='required'",
    ));
    assert_eq!(kind, "DeviceAlreadyAssigned");
    assert!(msg.contains("Hostdev already exists"), "{msg}");
    // Straight to qubesd, the extension's check says the same.
    let facts = json!({"source": "dom0", "dest": "work", "dest_virt_mode": "hvm", "device": {"port": "00_1b.0", "device_id": "0x8086:0x8c20::p040300"},
        "mode": "required", "assignments": [{"qube": "work", "port": "00_1b.0"}]});
    let out = env.cli(&["check", "assign"], facts.to_string().as_bytes());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exception"], "DeviceAlreadyAssigned", "{v}");
}

#[test]
fn devices_denied_holds_for_pci_assign_and_set_assignment() {
    let env = env();
    env.set_prop("work", "devices_denied", "u03****p02****");
    let (kind, msg) = error_of(&env.call(
        "mgmt",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_1f.6+_",
        b"mode='required'",
    ));
    assert_eq!(kind, "QubesDaemonAccessError");
    assert!(msg.contains("p02****") && msg.contains("p020000"), "{msg}");
    // Another class is not concerned; from dom0 too, the list holds.
    body_of(&env.call(
        "mgmt",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_1d.0+_",
        b"mode='required'",
    ));
    let (kind, _) = error_of(&env.call(
        "dom0",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_1c.0-00_00.0+_",
        b"mode='required'",
    ));
    assert_eq!(kind, "QubesDaemonAccessError");
    // Set.assignment to required of an older record, and the extension.
    let v: Value = serde_json::from_slice(
        &env.cli(
            &["check", "set-mode"],
            json!({"dest": "work", "dest_virt_mode": "hvm", "dest_devices_denied": "p02****", "device": {"port": "00_1f.6"},
                   "mode": "required", "assignments": [{"qube": "work", "port": "00_1f.6", "mode": "auto-attach"}]})
            .to_string()
            .as_bytes(),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(v["exception"], "QubesDaemonAccessError", "{v}");
    assert!(v["message"].as_str().unwrap().contains("p02****"), "{v}");
    // An unknown class cannot be checked against a list: refused.
    let (kind, msg) = error_of(&env.call(
        "mgmt",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_1f.3+_",
        b"mode='required'",
    ));
    assert_eq!(kind, "QubesDaemonAccessError", "{msg}");
}
