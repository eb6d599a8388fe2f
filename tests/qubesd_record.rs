#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The commands on top of qubesd's record (`assign-defaults`, `list`), the
//! rule check the qubesd extension asks (`check KIND`), and reads that
//! answer what qubesd holds at the moment of the call.

mod common;

use common::{body_of, FakeSysfs, TestEnv};
use serde_json::{json, Value};

const USB: &str = "dom0+00_14.0+0x8086+0x8cb1++p0c0330";

fn check(env: &TestEnv, kind: &str, facts: &Value) -> (Option<i32>, Value) {
    let out = env.cli(&["check", kind], facts.to_string().as_bytes());
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn assign_defaults_goes_through_qubesd_and_the_rules() {
    let env = TestEnv::new(FakeSysfs::standard());
    // Dry run: what would be assigned, and nothing is.
    let out = env.cli(&["assign-defaults", "--dry-run", "--json"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<(&str, &str, &str)> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["device"].as_str().unwrap(),
                l["qube"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("dom0:00_14.0:0x8086:0x8cb1::p0c0330", "sys-usb", "would-assign")),
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&("dom0:00_1f.6:0x8086:0x15a3::p020000", "sys-net", "would-assign")));
    assert!(outcomes.contains(&("dom0:00_1c.0-00_00.0:0x8086:0x08b1::p028000", "sys-net", "would-assign")));
    assert_eq!(outcomes.len(), 3, "only network and USB controllers");
    assert!(env.recorded().is_empty() && env.qubesd_writes().is_empty());
    // For real: each one is an Assign to qubesd, pinned to the device id, no options.
    let out = env.cli(&["assign-defaults"], b"");
    assert_eq!(out.status.code(), Some(0));
    let rec = env.recorded();
    assert_eq!(rec.len(), 3, "{rec:?}");
    assert!(rec
        .iter()
        .all(|e| e.mode.as_deref() == Some("required") && e.options.is_empty()));
    assert!(rec
        .iter()
        .any(|e| e.qube == "sys-usb" && e.id == "00_14.0" && e.identity.as_deref() == Some("0x8086:0x8cb1::p0c0330")));
    // Again: left alone.
    let out = env.cli(&["assign-defaults", "--json"], b"");
    let lines: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(lines
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["outcome"] == "already-assigned"));
    assert_eq!(env.qubesd_writes().len(), 3);
}

#[test]
fn list_shows_qubesd_assignments_and_running_holders() {
    let env = TestEnv::new(FakeSysfs::standard());
    body_of(&env.call(
        "dom0",
        "sys-usb",
        &format!("admin.vm.device.pci.Assign+{USB}"),
        b"mode='required'",
    ));
    env.set_power("sys-usb", "Running");
    let out = env.cli(&["list", "--json"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let usb = common::device_at(&rows, "00_14.0");
    assert_eq!(
        usb["assigned_to"],
        json!([{"qube": "sys-usb", "mode": "required", "options": {}}])
    );
    assert_eq!(usb["attached_to"], json!(["sys-usb"]));
    assert_eq!(usb["used_by_dom0"], json!([]));
}

#[test]
fn reads_answer_what_qubesd_holds_now() {
    let env = TestEnv::new(FakeSysfs::standard());
    let assigned = || body_of(&env.call("dom0", "work", "admin.vm.device.pci.Assigned", b""));
    assert_eq!(assigned(), "");
    // dom0's own tools change qubesd's record directly, many times in a row:
    // every read sees the change at once.
    for _ in 0..5 {
        assert_eq!(
            env.qubesd("admin.vm.device.pci.Assign", USB, "work", b"mode='required'"),
            b"0\0"
        );
        assert!(assigned().contains("port_id='00_14.0'"));
        assert_eq!(env.qubesd("admin.vm.device.pci.Unassign", USB, "work", b""), b"0\0");
        assert_eq!(assigned(), "");
    }
    // Attached follows the qube's start and stop.
    assert_eq!(
        env.qubesd("admin.vm.device.pci.Assign", USB, "work", b"mode='required'"),
        b"0\0"
    );
    let attached = || body_of(&env.call("dom0", "work", "admin.vm.device.pci.Attached", b""));
    assert_eq!(attached(), "");
    env.set_power("work", "Running");
    assert!(attached().starts_with("dom0+00_14.0:0x8086:0x8cb1::p0c0330 "));
    env.set_power("work", "Halted");
    assert_eq!(attached(), "");
}

#[test]
fn check_assign_applies_the_rules_to_the_facts_it_is_given() {
    let env = TestEnv::new(FakeSysfs::standard());
    let facts = |port: &str, id: &str, dest: &str, opts: Value, assignments: Value| {
        json!({
            "source": "dom0", "dest": dest, "dest_class": "AppVM", "dest_virt_mode": "hvm",
            "device": {"backend": "dom0", "port": port, "device_id": id},
            "mode": "required", "options": opts, "assignments": assignments,
        })
    };
    let usb_at_work = json!([{"qube": "work", "port": "00_14.0", "device_id": "0x8086:0x8cb1::p0c0330",
                              "mode": "required", "options": {}}]);
    assert_eq!(
        check(&env, "assign", &facts("00_14.0", "*", "sys-usb", json!({}), json!([]))),
        (Some(0), json!({"ok": true}))
    );
    let (code, v) = check(
        &env,
        "assign",
        &facts("00_14.2", "*", "sys-usb", json!({}), usb_at_work.clone()),
    );
    assert_eq!(
        (code, v["ok"].clone(), v["exception"].clone()),
        (Some(0), json!(false), json!("QubesValueError"))
    );
    assert!(v["message"].as_str().unwrap().contains("no-strict-reset"));
    // A stored option counts as qubesd renders it: any non-empty value is on.
    let nsr_at_work = json!([{"qube": "work", "port": "00_14.0", "options": {"no-strict-reset": "yes"}}]);
    let (_, v) = check(
        &env,
        "assign",
        &facts(
            "00_14.2",
            "*",
            "sys-usb",
            json!({"no-strict-reset": "True"}),
            nsr_at_work,
        ),
    );
    assert_eq!(v, json!({"ok": true}));
    for (port, dest, virt, exception) in [
        ("00_1c.0", "work", "hvm", "QubesValueError"),
        ("00_15.0", "work", "hvm", "DeviceNotFound"),
        ("00_14.0", "work", "pvh", "QubesException"),
    ] {
        let mut f = facts(port, "*", dest, json!({}), json!([]));
        f["dest_virt_mode"] = json!(virt);
        let (_, v) = check(&env, "assign", &f);
        assert_eq!(v["exception"], exception, "{port} {virt}: {v}");
    }
    // An option a qube turns on needs its grant (dom0 needs none).
    let mut f = facts("00_14.0", "*", "work", json!({"permissive": "True"}), json!([]));
    assert_eq!(check(&env, "assign", &f).1, json!({"ok": true}));
    f["source"] = json!("mgmt");
    f["system"] = json!({"mgmt": {"type": "AppVM", "tags": []}, "work": {"type": "AppVM", "tags": []}});
    assert_eq!(check(&env, "assign", &f).1["exception"], "QubesDaemonAccessError");
    // Modes other than required; hot-plug and detach of a running qube.
    let (_, v) = check(
        &env,
        "set-mode",
        &json!({"dest": "work", "device": {"port": "00_14.0"}, "mode": "auto-attach"}),
    );
    assert_eq!(v["exception"], "QubesValueError");
    let running =
        json!({"dest": "work", "dest_running": true, "dest_attached": ["00_14.0"], "device": {"port": "00_14.0"}});
    assert_eq!(check(&env, "attach", &running).1["exception"], "QubesVMNotHaltedError");
    assert_eq!(check(&env, "detach", &running).1["exception"], "QubesVMNotHaltedError");
    let halted = json!({"dest": "work", "dest_running": false, "device": {"port": "00_14.0"}});
    assert_eq!(check(&env, "attach", &halted).1, json!({"ok": true}));
    // Facts that do not parse: refused, exit 2.
    let out = env.cli(&["check", "assign"], b"{not json");
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
}

#[test]
fn check_start_refuses_devices_in_use_and_split_functions() {
    let env = TestEnv::new(FakeSysfs::standard());
    let usb =
        |qube: &str, port: &str, opts: Value| json!({"qube": qube, "port": port, "mode": "required", "options": opts});
    let start = |required: Value, running: Value| {
        check(
            &env,
            "start",
            &json!({"dest": "work", "assignments": required, "running": running}),
        )
        .1
    };
    assert_eq!(
        start(json!([usb("work", "00_14.0", json!({}))]), json!([])),
        json!({"ok": true})
    );
    let v = start(
        json!([usb("work", "00_14.0", json!({}))]),
        json!([usb("sys-usb", "00_14.0", json!({}))]),
    );
    assert_eq!(v["exception"], "QubesException");
    assert!(v["message"].as_str().unwrap().contains("in use by sys-usb"), "{v}");
    let v = start(
        json!([usb("work", "00_14.2", json!({}))]),
        json!([usb("sys-usb", "00_14.0", json!({}))]),
    );
    assert!(v["message"].as_str().unwrap().contains("same physical device"), "{v}");
    let nsr = json!({"no-strict-reset": "True"});
    assert_eq!(
        start(
            json!([usb("work", "00_14.2", nsr.clone())]),
            json!([usb("sys-usb", "00_14.0", nsr)])
        ),
        json!({"ok": true})
    );
    let v = start(json!([usb("work", "00_15.0", json!({}))]), json!([]));
    assert_eq!(v["exception"], "DeviceNotFound");
    // The stand-in's admin.vm.Start asks the same check, as the extension does.
    assert_eq!(
        env.qubesd("admin.vm.device.pci.Assign", USB, "work", b"mode='required'"),
        b"0\0"
    );
    assert_eq!(
        env.qubesd("admin.vm.device.pci.Assign", USB, "sys-usb", b"mode='required'"),
        b"0\0"
    );
    env.set_power("sys-usb", "Running");
    let refused = env.qubesd("admin.vm.Start", "", "work", b"");
    assert!(String::from_utf8_lossy(&refused).contains("in use by sys-usb"));
}
