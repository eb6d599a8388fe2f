#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! `qubes-pci`, the client for management qubes, driven against
//! `qubes-pci-admin call` through `--transport`, in both protocols.

mod common;

use std::process::{Command, Output};

use common::{FakeSysfs, TestEnv, BIN};

const CLIENT: &str = env!("CARGO_BIN_EXE_qubes-pci");

fn env() -> TestEnv {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-t.policy",
        "admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0\n\
         admin.vm.device.pci.Assigned * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Attached * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Assign * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Unassign * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Set.assignment * mgmt @tag:created-by-mgmt allow target=dom0\n",
    );
    env
}

fn client(env: &TestEnv, protocol: &str, args: &[&str]) -> Output {
    let mut c = Command::new(CLIENT);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env.envs() {
        c.env(k, v);
    }
    c.arg("--transport")
        .arg(format!("{BIN} call --source mgmt --target"))
        .args(["--protocol", protocol])
        .args(args);
    common::run(c, b"")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn every_subcommand_in_both_protocols() {
    for protocol in ["native", "text"] {
        let env = env();
        // list: a table and JSON.
        let out = client(&env, protocol, &["list"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = stdout(&out);
        assert!(table.starts_with("DEVICE"), "{table}");
        assert!(table
            .lines()
            .any(|l| l.starts_with("dom0:00_14.0") && l.contains("0000:00:14.0") && l.contains("USB controller")));
        let list = json(&client(&env, protocol, &["--json", "list"]));
        let usb = list
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["port"] == "00_14.0")
            .unwrap();
        assert_eq!(usb["device_id"], "0x8086:0x8cb1::p0c0330");
        assert_eq!(usb["data"]["sbdf"], "0000:00:14.0");
        // assign by address, by vendor:device id, by port id.
        let out = client(&env, protocol, &["assign", "work", "0000:00:14.0"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout(&out).contains("assigned dom0:00_14.0 to work (required)"));
        // Only required takes effect for PCI: other modes are refused (QubesValueError).
        let out = client(
            &env,
            protocol,
            &["assign", "work", "8086:15a3", "--mode", "auto-attach"],
        );
        assert_eq!(out.status.code(), Some(11), "{}", String::from_utf8_lossy(&out.stderr));
        let out = client(&env, protocol, &["assign", "work", "8086:15a3"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let out = client(&env, protocol, &["assign", "work", "dom0:00_1c.0-00_00.0"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        // assigned: three, pinned to the device id where it was looked up.
        let a = json(&client(&env, protocol, &["--json", "assigned", "work"]));
        let a = a.as_array().unwrap();
        assert_eq!(a.len(), 3, "{a:?}");
        let usb = a.iter().find(|x| x["port"] == "00_14.0").unwrap();
        assert_eq!(
            (usb["device_id"].as_str(), usb["mode"].as_str()),
            (Some("0x8086:0x8cb1::p0c0330"), Some("required"))
        );
        let nic = a.iter().find(|x| x["port"] == "00_1f.6").unwrap();
        assert_eq!(nic["mode"], "required");
        let wifi = a.iter().find(|x| x["port"] == "00_1c.0-00_00.0").unwrap();
        assert_eq!(wifi["device_id"], "*");
        let table = stdout(&client(&env, protocol, &["assigned", "work"]));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("dom0:00_1f.6") && l.contains("required")),
            "{table}"
        );
        // set-mode
        let out = client(&env, protocol, &["set-mode", "work", "00_1f.6", "required"]);
        assert_eq!(out.status.code(), Some(0));
        let a = json(&client(&env, protocol, &["--json", "assigned", "work"]));
        assert!(a.as_array().unwrap().iter().all(|x| x["mode"] == "required"));
        // attached: nothing while work is halted; what it holds once started.
        assert_eq!(
            json(&client(&env, protocol, &["--json", "attached", "work"])),
            serde_json::json!([])
        );
        env.set_power("work", "Running");
        let att = json(&client(&env, protocol, &["--json", "attached", "work"]));
        assert_eq!(att.as_array().unwrap().len(), 3, "{att}");
        // unassign, also of a device that is gone.
        let out = client(&env, protocol, &["unassign", "work", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(0));
        let out = client(&env, protocol, &["unassign", "work", "dom0:00_14.0"]);
        assert_eq!(out.status.code(), Some(0));
        let a = json(&client(&env, protocol, &["--json", "assigned", "work"]));
        assert_eq!(a.as_array().unwrap().len(), 1);
    }
}

#[test]
fn refusals_exit_with_their_type_and_report_structured_errors() {
    for protocol in ["native", "text"] {
        let env = env();
        assert_eq!(
            client(&env, protocol, &["assign", "work", "00_14.0"]).status.code(),
            Some(0)
        );
        let out = client(&env, protocol, &["assign", "work", "00_14.0"]);
        assert_eq!(out.status.code(), Some(5), "DeviceAlreadyAssigned ({protocol})");
        assert!(String::from_utf8_lossy(&out.stderr).contains("DeviceAlreadyAssigned"));
        let out = client(&env, protocol, &["--json", "unassign", "work", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(6), "DeviceNotAssigned");
        let e = json(&out);
        assert_eq!(e["error"]["kind"], "DeviceNotAssigned");
        assert_eq!(e["error"]["qube"], "work");
        assert!(e["error"]["device"].as_str().unwrap().contains("00_1f.6"));
        // Not allowed by the policy: sys-net was not created by mgmt.
        let out = client(&env, protocol, &["assign", "sys-net", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(3), "PermissionDenied");
        // An option without its grant.
        let out = client(
            &env,
            protocol,
            &["assign", "work", "00_1f.6", "-o", "no-strict-reset=True"],
        );
        assert_eq!(out.status.code(), Some(3));
        // Rules: a bridge.
        let out = client(&env, protocol, &["assign", "work", "00_1c.0"]);
        assert_eq!(out.status.code(), Some(11), "QubesValueError");
        // Unknown device.
        let out = client(&env, protocol, &["assign", "work", "00_15.0"]);
        assert_eq!(out.status.code(), Some(4), "DeviceNotFound");
    }
}

#[test]
fn local_failures_exit_1_and_usage_errors_2() {
    let env = env();
    // The client refuses a bad option before calling.
    let out = client(&env, "native", &["assign", "work", "00_14.0", "-o", "identity=x"]);
    assert_eq!(out.status.code(), Some(1));
    let out = client(&env, "native", &["assign", "work", "not-a-device"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("port id"));
    // An address nobody has.
    let out = client(&env, "text", &["assign", "work", "0000:00:15.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such device"));
    // No transport.
    let mut c = Command::new(CLIENT);
    c.args(["--transport", "/nonexistent/qrexec-client-vm", "list"]);
    let out = common::run(c, b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run"));
    let mut c = Command::new(CLIENT);
    c.args(["assign", "work"]);
    assert_eq!(common::run(c, b"").status.code(), Some(2));
}

#[test]
fn default_transport_is_qrexec_client_vm_with_target_and_service() {
    // A stand-in qrexec-client-vm on PATH records how it was called.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("qrexec-client-vm");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {}/args\ncat > /dev/null\nprintf '0\\000'\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = Command::new(CLIENT);
    c.env(
        "PATH",
        format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default()),
    )
    .env_remove("QUBES_PCI_TRANSPORT")
    .args(["--protocol", "text", "unassign", "work", "00_14.0"]);
    let out = common::run(c, b"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args.trim(), "work admin.vm.device.pci.Unassign+dom0+00_14.0");
}

#[test]
fn client_links_only_the_rpc_crate() {
    for f in ["main.rs", "device.rs", "output.rs"] {
        let src = std::fs::read_to_string(format!("{}/src/client/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(
            !src.contains("qubes_pci_admin"),
            "src/client/{f} uses the service crate"
        );
    }
}

#[test]
fn a_call_refused_by_qrexec_itself_is_permission_denied() {
    // qrexec-client-vm prints "Request refused" and exits 126 when the
    // policy denies the call before it reaches the service.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("qrexec-client-vm");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat > /dev/null\necho 'Request refused' >&2\nexit 126\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = Command::new(CLIENT);
    c.env(
        "PATH",
        format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default()),
    )
    .env_remove("QUBES_PCI_TRANSPORT")
    .args(["--json", "assigned", "work"]);
    let out = common::run(c, b"");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "PermissionDenied");
}
