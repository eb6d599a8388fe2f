#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Every `--json` output of both binaries, errors included, validated
//! against the one schema, `docs/json-schema.json`.

mod common;

use std::process::Command;

use common::{FakeSysfs, TestEnv, BIN};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_qubes-pci");
const SCHEMA: &str = include_str!("../docs/json-schema.json");

/// Checks `instance` against the schema's definition `def`.
fn check(def: &str, instance: &Value, what: &str) {
    let mut schema: Value = serde_json::from_str(SCHEMA).unwrap();
    assert!(schema["$defs"].get(def).is_some(), "no definition {def}");
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{instance:#}");
}

fn json_of(out: &std::process::Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn every_json_output_follows_the_schema() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-t.policy",
        "admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0\n\
         admin.vm.device.pci.Assigned * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Attached * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Unassign * mgmt @anyvm allow target=dom0\n",
    );
    let client = |protocol: &str, args: &[&str]| {
        let mut c = Command::new(CLIENT);
        c.env_clear().env("QUBES_PCI_ADMIN_LOG", "off");
        for (k, v) in env.envs() {
            c.env(k, v);
        }
        c.arg("--transport")
            .arg(format!("{BIN} call --source mgmt --target"))
            .args(["--protocol", protocol, "--json"])
            .args(args);
        common::run(c, b"")
    };
    for protocol in ["native", "text"] {
        let cases: [(&str, &[&str]); 9] = [
            ("devices", &["list"]),
            ("device", &["info", "00_14.0"]),
            ("done", &["assign", "-r", "work", "00_14.0"]),
            ("error", &["assign", "-r", "work", "00_14.0"]),
            ("assignments", &["assigned", "work"]),
            ("assignments", &["list", "work"]),
            ("assignments", &["attached", "work"]),
            ("error", &["assign", "-r", "work", "0000:00:15.0"]),
            ("done", &["unassign", "work", "00_14.0"]),
        ];
        for (def, args) in cases {
            let out = client(protocol, args);
            check(
                def,
                &json_of(&out, &format!("{args:?}")),
                &format!("qubes-pci {args:?} ({protocol})"),
            );
        }
    }
    // Usage and local errors too.
    let mut c = Command::new(CLIENT);
    c.args(["--json", "assign", "work"]);
    check("error", &json_of(&common::run(c, b""), "usage"), "usage error");
    let mut c = Command::new(CLIENT);
    c.args(["--json", "--transport", "/nonexistent/qrexec-client-vm", "list"]);
    check("error", &json_of(&common::run(c, b""), "local"), "local error");

    // The service's own commands.
    check(
        "devices",
        &json_of(&env.cli(&["list", "--json"], b""), "list"),
        "qubes-pci-admin list --json",
    );
    check(
        "defaults",
        &json_of(&env.cli(&["assign-defaults", "--dry-run", "--json"], b""), "defaults"),
        "assign-defaults --dry-run --json",
    );
    let skipped = json_of(
        &env.cli(&["assign-defaults", "--dry-run", "--json", "--usb", "none"], b""),
        "defaults",
    );
    assert!(
        skipped.as_array().unwrap().iter().any(|l| l["qube"].is_null()),
        "{skipped}"
    );
    check("defaults", &skipped, "assign-defaults --usb none --json");
    // work with a NIC that has no reset method, and one that is gone.
    for arg in ["dom0+00_1f.6", "dom0+00_15.0"] {
        let _ = env.call(
            "dom0",
            "work",
            &format!("admin.vm.device.pci.Assign+{arg}"),
            b"mode='required'",
        );
    }
    let out = env.cli(&["preflight", "--json", "work"], b"");
    let preflight = json_of(&out, "preflight");
    assert!(!preflight["problems"].as_array().unwrap().is_empty(), "{preflight}");
    check("preflight", &preflight, "preflight --json");
    check(
        "reconcile",
        &json_of(&env.cli(&["reconcile", "--json"], b""), "reconcile"),
        "reconcile --json",
    );
    for (s, t, svc) in [
        ("mgmt", "@adminvm", "admin.vm.device.pci.Available"),
        ("work", "sys-net", "admin.vm.device.pci.Assign+dom0+00_14.0"),
    ] {
        let out = env.cli(&["policy", "eval", "--json", s, t, svc], b"");
        check("decision", &json_of(&out, "eval"), "policy eval --json");
        let line = format!("{}\n", serde_json::json!({"source": s, "target": t, "service": svc}));
        let out = env.cli(&["policy", "eval", "--batch"], line.as_bytes());
        check("decision", &json_of(&out, "batch"), "policy eval --batch");
    }
}

/// The schema catches what the old outputs did wrong (strings for
/// booleans, a preformatted list), so the test above would fail on them.
#[test]
fn the_schema_refuses_the_old_shapes() {
    let mut schema: Value = serde_json::from_str(SCHEMA).unwrap();
    schema["$ref"] = Value::String("#/$defs/assignment".into());
    let v = jsonschema::validator_for(&schema).unwrap();
    let good = serde_json::json!({"backend": "dom0", "port_id": "00_14.0", "device_id": "*", "frontend": "work",
        "mode": "required", "options": {"no-strict-reset": true}, "attached": false});
    assert!(v.is_valid(&good));
    let mut old = good.clone();
    old["options"] = serde_json::json!({"no-strict-reset": "True"});
    assert!(!v.is_valid(&old));
    let mut old = good;
    old.as_object_mut().unwrap().remove("port_id");
    old["port"] = "00_14.0".into();
    assert!(!v.is_valid(&old));
}
