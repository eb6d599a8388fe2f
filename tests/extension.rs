#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The qubesd extension (service/qubesd-ext), run with test doubles of
//! qubesd's objects (tests/extension/fakes) against the real binary and a
//! fake sysfs: the facts it passes, the refusals it raises, fail-closed,
//! and that every facts object it sends is of the contract's shape
//! (`qubes_pci_rpc::extension`, docs/extension-schema.json).
//! Against upstream qubesd itself: tests/real_qubesd.rs.

mod common;

use std::path::Path;
use std::process::Command;

use common::{FakeSysfs, BIN};
use qubes_pci_rpc::extension::{ExtensionFacts, Verdict};

const SCHEMA: &str = "docs/extension-schema.json";

/// The contract's JSON schema, generated from its types.
fn schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(ExtensionFacts)).unwrap();
    let verdict = serde_json::to_value(schemars::schema_for!(Verdict)).unwrap();
    s["$defs"]["Verdict"] = verdict;
    s["$defs"]["Verdict"].as_object_mut().unwrap().remove("$schema");
    s
}

#[test]
fn the_committed_schema_is_the_one_the_types_define() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
    if std::env::var_os("QUBES_PCI_ADMIN_WRITE_SCHEMA").is_some() {
        std::fs::write(root.join(SCHEMA), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(root.join(SCHEMA)).unwrap();
    assert_eq!(
        committed, generated,
        "{SCHEMA} is out of date: run the test with QUBES_PCI_ADMIN_WRITE_SCHEMA=1"
    );
}

#[test]
fn the_extension_asks_the_binary_and_raises_its_refusals() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sysfs = FakeSysfs::standard();
    let policy = tempfile::tempdir().unwrap();
    // dom0's procfs: virtual mounts only, no swap.
    let procfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(procfs.path().join("self")).unwrap();
    std::fs::write(
        procfs.path().join("self/mountinfo"),
        common::mountinfo(common::VIRTUAL_MOUNTS),
    )
    .unwrap();
    std::fs::write(procfs.path().join("swaps"), "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
    // The binary behind a recorder: every facts object the extension sends
    // is kept, then checked against the contract.
    let facts = tempfile::tempdir().unwrap();
    let recorder = facts.path().join("qubes-pci-admin");
    common::write_script(
        &recorder,
        &format!(
            "#!/bin/sh\ntee \"{}/$2.$$.json\" | exec \"{BIN}\" \"$@\"\n",
            facts.path().display()
        ),
    );
    // First with no daemon (every check runs the binary, through the
    // recorder), then with one: the same tests pass, and not one check
    // starts a process.
    let run_suite = |bin: &Path, daemon_socket: &Path| {
        let out = Command::new("python3")
            .arg(root.join("tests/extension/test_extension.py"))
            .env(
                "PYTHONPATH",
                format!(
                    "{}:{}",
                    root.join("tests/extension/fakes").display(),
                    root.join("service/qubesd-ext").display()
                ),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("QUBES_PCI_ADMIN_BIN", bin)
            .env("QUBES_PCI_ADMIN_DAEMON_SOCKET", daemon_socket)
            .env("QUBES_PCI_ADMIN_SYSFS", sysfs.root())
            .env("QUBES_PCI_ADMIN_PROCFS", procfs.path())
            .env("QUBES_PCI_ADMIN_POLICY_DIR", policy.path())
            .env("QUBES_PCI_ADMIN_LOG", "off")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("13 passed, 0 failed"), "{text}");
    };
    let daemon_socket = facts.path().join("daemon.sock");
    run_suite(&recorder, &daemon_socket);

    let spawned = tempfile::tempdir().unwrap();
    let counter = spawned.path().join("qubes-pci-admin");
    common::write_script(
        &counter,
        &format!(
            // Runs the fallback test asks for are marked as such.
            "#!/bin/sh\ntouch \"{}/$2.$$.${{FALLBACK_EXPECTED:-ran}}\"\nexec \"{BIN}\" \"$@\"\n",
            spawned.path().display()
        ),
    );
    let mut daemon = Command::new(BIN)
        .env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .env("QUBES_PCI_ADMIN_SYSFS", sysfs.root())
        .env("QUBES_PCI_ADMIN_PROCFS", procfs.path())
        .env("QUBES_PCI_ADMIN_POLICY_DIR", policy.path())
        .args(["serve", "--socket"])
        .arg(&daemon_socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for_socket(&daemon_socket);
    run_suite(&counter, &daemon_socket);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let ran: Vec<String> = std::fs::read_dir(spawned.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ran"))
        .collect();
    assert!(
        ran.is_empty(),
        "checks started the binary although the daemon answered: {ran:?}"
    );

    let schema = schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(facts.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let sent: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&sent).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}\n{sent:#}", path.display());
        kinds.insert(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .split('.')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["assign", "attach", "detach", "set-mode", "start"],
        "every kind of facts was sent and checked"
    );
}
