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
         admin.vm.device.pci.Set.assignment * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Attach * mgmt @tag:created-by-mgmt allow target=dom0\n\
         admin.vm.device.pci.Detach * mgmt @tag:created-by-mgmt allow target=dom0\n",
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

/// The client with `transport` (a stand-in for qrexec-client-vm) as its transport.
fn client_via(env: &TestEnv, transport: &std::path::Path, args: &[&str]) -> Output {
    let mut c = Command::new(CLIENT);
    c.env_clear().env("QUBES_PCI_ADMIN_LOG", "off");
    for (k, v) in env.envs() {
        c.env(k, v);
    }
    c.arg("--transport").arg(transport).args(args);
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
        // list (also the default command, and its aliases): a table and JSON.
        let out = client(&env, protocol, &["list"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = stdout(&out);
        assert!(table.starts_with("BACKEND:DEVID"), "{table}");
        assert!(table
            .lines()
            .any(|l| l.starts_with("dom0:00_14.0") && l.contains("0000:00:14.0") && l.contains("USB controller")));
        for alias in [&[][..], &["ls"], &["l"]] {
            assert_eq!(stdout(&client(&env, protocol, alias)), table, "{alias:?}");
        }
        let list = json(&client(&env, protocol, &["--json", "list"]));
        let usb = common::device_at(&list, "00_14.0");
        assert_eq!(usb["device_id"], "0x8086:0x8cb1::p0c0330");
        assert_eq!(usb["sbdf"], "0000:00:14.0");
        assert_eq!(usb["bridge"], false);
        // assign as qvm-pci does: PCI needs --required (the default mode,
        // auto-attach, is refused by dom0 with what to do).
        let out = client(&env, protocol, &["assign", "work", "0000:00:14.0"]);
        assert_eq!(out.status.code(), Some(11), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("required"));
        let out = client(&env, protocol, &["assign", "--required", "work", "0000:00:14.0"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout(&out).contains("assigned dom0:00_14.0 to work (required)"));
        // The same device named by port, by qvm-pci's full name, by id:
        // the same assignment, so dom0 says it is there already.
        for name in [
            "dom0:00_14.0",
            "00_14.0",
            "dom0:00_14.0:0x8086:0x8cb1::p0c0330",
            "8086:8cb1",
        ] {
            let out = client(&env, protocol, &["assign", "-r", "work", name]);
            assert_eq!(
                out.status.code(),
                Some(5),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = client(&env, protocol, &["s", "-r", "work", "8086:15a3"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        // A device without a reset method: assigned as asked, with a warning.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no reset method"),
            "{out:?}"
        );
        let out = client(
            &env,
            protocol,
            &["assign", "--required", "--port", "work", "dom0:00_1c.0-00_00.0"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        // assigned: three, pinned to the device id unless --port.
        let a = json(&client(&env, protocol, &["--json", "assigned", "work"]));
        let a = a.as_array().unwrap();
        assert_eq!(a.len(), 3, "{a:?}");
        let usb = a.iter().find(|x| x["port_id"] == "00_14.0").unwrap();
        assert_eq!(
            (usb["device_id"].as_str(), usb["mode"].as_str()),
            (Some("0x8086:0x8cb1::p0c0330"), Some("required"))
        );
        let wifi = a.iter().find(|x| x["port_id"] == "00_1c.0-00_00.0").unwrap();
        assert_eq!(wifi["device_id"], "*");
        let table = stdout(&client(&env, protocol, &["list", "work"]));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("dom0:00_1f.6") && l.contains("required") && l.ends_with("no")),
            "{table}"
        );
        // set-mode
        let out = client(&env, protocol, &["set-mode", "work", "00_1f.6", "required"]);
        assert_eq!(out.status.code(), Some(0));
        // info
        let info = json(&client(&env, protocol, &["--json", "info", "00:1f.6"]));
        assert_eq!(info["port_id"], "00_1f.6");
        assert_eq!(info["reset_methods"], serde_json::json!([]));
        // attached: nothing while work is halted; what it holds once started.
        assert_eq!(
            json(&client(&env, protocol, &["--json", "attached", "work"])),
            serde_json::json!([])
        );
        // The NIC has no reset method, so the start check refuses work
        // until its assignment carries no-strict-reset (set from dom0).
        let refused = String::from_utf8_lossy(&env.qubesd("admin.vm.Start", "", "work", b"")).into_owned();
        assert!(
            refused.starts_with("2\0QubesException\0") && refused.contains("no reset method"),
            "{refused}"
        );
        common::body_of(&env.call(
            "dom0",
            "work",
            "admin.vm.device.pci.Assign+dom0+00_1f.6+0x8086+0x15a3++p020000",
            b"mode='required' _no-strict-reset='True'",
        ));
        env.set_power("work", "Running");
        let att = json(&client(&env, protocol, &["--json", "list", "work"]));
        assert!(att.as_array().unwrap().iter().all(|x| x["attached"] == true), "{att}");
        // attach and detach: never a hot-plug, and dom0 says what to do.
        let out = client(&env, protocol, &["attach", "work", "00_14.2"]);
        assert_ne!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stderr).contains("assign"), "{out:?}");
        // unassign, also of a device that is gone; without a device, all.
        let out = client(&env, protocol, &["unassign", "work", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let out = client(&env, protocol, &["u", "work"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let a = json(&client(&env, protocol, &["--json", "assigned", "work"]));
        assert_eq!(a.as_array().unwrap().len(), 0);
    }
}

#[test]
fn refusals_exit_with_their_type_and_report_structured_errors() {
    for protocol in ["native", "text"] {
        let env = env();
        assert_eq!(
            client(&env, protocol, &["assign", "-r", "work", "00_14.0"])
                .status
                .code(),
            Some(0)
        );
        let out = client(&env, protocol, &["assign", "-r", "work", "00_14.0"]);
        assert_eq!(out.status.code(), Some(5), "DeviceAlreadyAssigned ({protocol})");
        assert!(String::from_utf8_lossy(&out.stderr).contains("DeviceAlreadyAssigned"));
        let out = client(&env, protocol, &["--json", "unassign", "work", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(6), "DeviceNotAssigned");
        let e = json(&out);
        assert_eq!(e["error"]["type"], "DeviceNotAssigned");
        assert_eq!(e["error"]["qube"], "work");
        assert!(e["error"]["device"].as_str().unwrap().contains("00_1f.6"));
        // Not allowed by the policy: sys-net was not created by mgmt.
        let out = client(&env, protocol, &["assign", "-r", "sys-net", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(3), "PermissionDenied");
        // An option without its grant.
        let out = client(
            &env,
            protocol,
            &["assign", "-r", "work", "00_1f.6", "-o", "no-strict-reset=True"],
        );
        assert_eq!(out.status.code(), Some(3));
        // Rules: a bridge.
        let out = client(&env, protocol, &["assign", "-r", "work", "00_1c.0"]);
        assert_eq!(out.status.code(), Some(11), "QubesValueError");
        // A device nobody has: DeviceNotFound however it is named.
        for name in ["00_15.0", "0000:00:15.0", "00:15.0", "1234:5678", "not-a-device"] {
            let out = client(&env, protocol, &["assign", "-r", "work", name]);
            assert_eq!(out.status.code(), Some(4), "{name}: DeviceNotFound");
        }
    }
}

#[test]
fn local_failures_exit_1_and_usage_errors_2() {
    let env = env();
    // The client refuses a bad option before calling: a usage error.
    let out = client(&env, "native", &["assign", "-r", "work", "00_14.0", "-o", "identity=x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = client(
        &env,
        "native",
        &["--json", "assign", "-r", "work", "00_14.0", "-o", "x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["type"], "usage");
    // Usage errors come out as JSON under --json too.
    let mut c = Command::new(CLIENT);
    c.args(["--json", "assign", "work"]);
    let out = common::run(c, b"");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["code"], 2);
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

/// Against a dom0 that speaks only text (qubesd, or a service that does
/// not know the native protocol), the native client goes on in text by
/// itself.
#[test]
fn the_native_protocol_falls_back_to_text_by_itself() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("text-only");
    // Drops a native payload (as qubesd would refuse it) and calls in text.
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nin=$(head -c 4 | od -An -c | tr -d ' ')\n\
             case \"$in\" in *Q*P*N*) printf '2\\000QubesException\\000\\000not a text payload\\000'; exit 0;; esac\n\
             echo text >> {}/calls\nexec {BIN} call --source mgmt --target \"$@\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = client_via(&env, &fake, &["--json", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(json(&out).as_array().unwrap().len() > 3);
    assert!(std::fs::read_to_string(dir.path().join("calls"))
        .unwrap()
        .contains("text"));
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
    // (the fake's Available answer is empty, so the port stays a port)
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
    assert_eq!(json(&out)["error"]["type"], "PermissionDenied");
}

/// `list` shows who each device is assigned to, for the qubes dom0 lets
/// this qube list and read (admin.vm.List, then Assigned of each); qubes it
/// may not read are left out, as qvm-pci does.
#[test]
fn list_shows_who_each_device_is_assigned_to() {
    let env = env();
    assert_eq!(
        client(&env, "native", &["assign", "-r", "work", "00_14.0"])
            .status
            .code(),
        Some(0)
    );
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("with-vm-list");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$2\" = admin.vm.List ]; then cat >/dev/null; \
             printf '0\\000dom0 class=AdminVM state=Running\\nwork class=AppVM state=Halted\\nsys-net class=AppVM state=Running\\n'; \
             exit 0; fi\nexec {BIN} call --source mgmt --target \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| client_via(&env, &fake, args);
    let out = run(&["--json", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let list = json(&out);
    let usb = common::device_at(&list, "00_14.0");
    assert_eq!(
        usb["assigned_to"],
        serde_json::json!([{"qube": "work", "mode": "required", "options": {}}])
    );
    let nic = common::device_at(&list, "00_1f.6");
    assert_eq!(nic["assigned_to"], serde_json::json!([]));
    let table = stdout(&run(&["list"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("dom0:00_14.0") && l.ends_with("work (required)")),
        "{table}"
    );
    // Without admin.vm.List: not known, and a note says why.
    let out = client(&env, "native", &["--json", "list"]);
    assert!(json(&out)
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["assigned_to"].is_null()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.vm.List"));
}

/// The man page holds the one exit status table: every exception name
/// with its code, and the JSON shapes.
#[test]
fn the_man_page_has_the_exit_status_table_and_the_json_shapes() {
    let mut c = Command::new(CLIENT);
    c.arg("man");
    let man = stdout(&common::run(c, b"")).replace("\\-", "-");
    for kind in qubes_pci_rpc::ExceptionKind::ALL {
        assert!(man.contains(&format!("{} {}", kind.code(), kind.name())), "{kind:?}");
    }
    for shape in [
        "port_id",
        "reset_methods",
        "assigned_to",
        "{error: {type, code, message, device, qube}}",
    ] {
        assert!(man.contains(shape), "{shape}");
    }
}

/// What the client says: reset warnings only where they can matter (not
/// for bridges, once per device), its own commands in suggestions,
/// qubesd's terse refusals said plainly, a hint outside a qube, and a quiet
/// end when its reader stops.
#[test]
fn messages_a_management_qube_user_can_act_on() {
    let env = env();
    for protocol in ["native", "text"] {
        let out = client(&env, protocol, &["list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("dom0:00_00.0") && !err.contains("dom0:00_1c.0 "),
            "no bridge: {err}"
        );
        assert_eq!(
            err.matches("dom0:00_1f.6 has no reset method").count(),
            1,
            "once: {err}"
        );
        // assign without --required: dom0 suggests this client's command.
        let out = client(&env, protocol, &["assign", "work", "00_1f.6"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("`qubes-pci assign --required work dom0:00_1f.6`"), "{err}");
        assert!(!err.contains("qvm-pci"), "{err}");
        // qubesd's own refusal, said plainly.
        let out = client(&env, protocol, &["unassign", "work", "00_1f.6"]);
        assert_eq!(out.status.code(), Some(6));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("dom0:00_1f.6 is not assigned to work (qubes-pci assigned work lists what is)"),
            "{err}"
        );
        assert!(!err.contains("'pci device"), "{err}");
    }
    // Outside a qube: no qrexec-client-vm.
    let out = Command::new(CLIENT)
        .env_clear()
        .env("PATH", "/nonexistent")
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs in a qube") && err.contains("--transport"), "{err}");
    // The reader stops early: no "Broken pipe", success.
    for bin in [CLIENT, BIN] {
        let mut child = Command::new(bin)
            .arg("man")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{bin}");
        assert!(out.stderr.is_empty(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A payload with its value unquoted gets told how to write it.
#[test]
fn an_unquoted_value_is_told_how_to_write_it() {
    let env = env();
    let (kind, msg) = common::error_of(&env.call(
        "dom0",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
        b"mode=required",
    ));
    assert_eq!(kind, "ProtocolError");
    assert!(msg.contains("mode=required") && msg.contains("key='value'"), "{msg}");
}
